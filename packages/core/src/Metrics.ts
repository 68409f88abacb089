/**
 * Snakepit's Effect `Metric`s, each tagged with `pool`. Read them with `Metric.value`, or
 * export them with @effect/opentelemetry.
 *
 * @since 0.1.0
 */
import { Metric } from "effect"

/** Calls started. */
export const requests = Metric.counter("snakepit_requests_total", { description: "Calls started", incremental: true })
/** Calls that failed, for any reason. */
export const errors = Metric.counter("snakepit_errors_total", { description: "Calls that failed", incremental: true })
/** Callers that gave up waiting for a worker. */
export const queueTimeouts = Metric.counter("snakepit_queue_timeouts_total", {
  description: "Callers that waited longer than queue.timeout",
  incremental: true
})
/** Workers started again (crash, failed health check, failed start, recycling, restart). */
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
