/**
 * Snakepit's Effect `Metric`s, each tagged with `pool` (some also with `tool`, `cause`,
 * `outcome` or `worker`). Read a pool's values with {@link forPool}, or export them with
 * @effect/opentelemetry (its metrics reader sees every Effect metric; see docs/observability.md).
 *
 * @since 0.1.0
 */
import { Effect, Metric, MetricBoundaries, type MetricState } from "effect"

/** Calls started. */
export const requests = Metric.counter("snakepit_requests_total", { description: "Calls started", incremental: true })
/** Calls that failed, for any reason. */
export const errors = Metric.counter("snakepit_errors_total", { description: "Calls that failed", incremental: true })
/** Callers that gave up waiting for a worker. */
export const queueTimeouts = Metric.counter("snakepit_queue_timeouts_total", {
  description: "Callers that waited longer than queue.timeout",
  incremental: true
})
/**
 * Workers started again, tagged with `pool` and `cause` (`Crashed`, `Unhealthy`, `StartFailed`,
 * `Recycle`, `Restart`).
 */
export const restarts = Metric.counter("snakepit_worker_restarts_total", {
  description: "Workers started again",
  incremental: true
})
/** Workers able to serve. */
export const ready = Metric.gauge("snakepit_workers_ready", { description: "Workers able to serve" })
/** Workers serving at least one call. */
export const busy = Metric.gauge("snakepit_workers_busy", { description: "Workers serving a call" })
/** Callers waiting for a worker. */
export const queued = Metric.gauge("snakepit_queue_length", { description: "Callers waiting for a worker" })

/**
 * Cancelled calls still running after `cancelGrace`, tagged with `pool` and `tool`: each
 * retired its worker.
 *
 * @since 0.2.0
 * @category metrics
 */
export const stuckCalls = Metric.counter("snakepit_stuck_calls_total", {
  description: "Cancelled calls still running after cancelGrace (their worker was replaced)",
  incremental: true
})

/**
 * Session calls that `hint` affinity served away from their session's home worker (it was busy,
 * or gone): the tool saw `ctx.session_moved`. Tagged with `pool`.
 *
 * @since 0.2.0
 * @category metrics
 */
export const sessionFallbacks = Metric.counter("snakepit_session_fallbacks_total", {
  description: "Session calls served away from their home worker (hint affinity)",
  incremental: true
})

/**
 * How long calls took, from the pool's lease to the worker's answer, in seconds; tagged with
 * `pool`, `tool` and `outcome` (`success` or `failure`).
 *
 * @since 0.3.0
 * @category metrics
 */
export const callDuration = Metric.histogram(
  "snakepit_call_duration_seconds",
  MetricBoundaries.exponential({ start: 0.0005, factor: 2, count: 18 }),
  "Call duration from lease to answer"
)

/**
 * How long calls waited for a worker, in seconds (0 when one was idle); tagged with `pool` and
 * `tool`.
 *
 * @since 0.3.0
 * @category metrics
 */
export const queueWait = Metric.histogram(
  "snakepit_queue_wait_seconds",
  MetricBoundaries.exponential({ start: 0.0001, factor: 2, count: 20 }),
  "Time a call waited for a worker"
)

/**
 * Calls running now, tagged with `pool` and `tool`.
 *
 * @since 0.3.0
 * @category metrics
 */
export const inFlight = Metric.gauge("snakepit_calls_in_flight", { description: "Calls running now" })

/**
 * Resident memory of each worker at its last health check, tagged with `pool` and `worker`.
 *
 * @since 0.3.0
 * @category metrics
 */
export const workerRss = Metric.gauge("snakepit_worker_rss_bytes", {
  description: "Resident memory of a worker at its last health check"
})

/**
 * Workers that died on their own (exit or signal) or stopped answering, tagged with `pool` and
 * `cause` (`exit_<code>`, the signal's name, or `unhealthy`). Each also counts in {@link restarts},
 * whose `cause` tag says why any worker was started again.
 *
 * @since 0.3.0
 * @category metrics
 */
export const crashes = Metric.counter("snakepit_worker_crashes_total", {
  description: "Workers that crashed or stopped answering",
  incremental: true
})

/**
 * Python log records a worker dropped (its rate limit), tagged with `pool` and `tool`.
 *
 * @since 0.3.0
 * @category metrics
 */
export const droppedLogs = Metric.counter("snakepit_python_logs_dropped_total", {
  description: "Python log records dropped by the worker's rate limit",
  incremental: true
})

/**
 * Python spans a call made beyond the per-call cap, dropped; tagged with `pool` and `tool`.
 *
 * @since 0.3.0
 * @category metrics
 */
export const droppedSpans = Metric.counter("snakepit_python_spans_dropped_total", {
  description: "Python spans dropped beyond the per-call cap",
  incremental: true
})

/**
 * One metric of a pool as {@link forPool} reads it.
 *
 * @since 0.3.0
 * @category models
 */
export interface PoolMetric {
  readonly name: string
  /** Its tags other than `pool` (`tool`, `cause`, `outcome`, `worker`). */
  readonly tags: Readonly<Record<string, string>>
  /** A counter's count, a gauge's value, or a histogram's `{ count, sum, min, max, buckets }`. */
  readonly state: MetricState.MetricState.Untyped
}

/**
 * Every Snakepit metric of pool `pool` (default `"default"`), whatever its other tags: no need to
 * know them to read a pool's values.
 *
 * @example
 * import { Metrics } from "@snakepit/core"
 * import { Effect } from "effect"
 *
 * const requests = Effect.map(Metrics.forPool("default"), (all) =>
 *   all.filter((m) => m.name === "snakepit_requests_total")
 * )
 *
 * @since 0.3.0
 * @category getters
 */
export const forPool = (pool = "default"): Effect.Effect<ReadonlyArray<PoolMetric>> =>
  Effect.map(Metric.snapshot, (pairs) => {
    const found: Array<PoolMetric> = []
    for (const pair of pairs) {
      const key = pair.metricKey
      if (!key.name.startsWith("snakepit_")) continue
      if (!key.tags.some((tag) => tag.key === "pool" && tag.value === pool)) continue
      const tags: Record<string, string> = {}
      for (const tag of key.tags) if (tag.key !== "pool") tags[tag.key] = tag.value
      found.push({ name: key.name, tags, state: pair.metricState })
    }
    return found
  })
