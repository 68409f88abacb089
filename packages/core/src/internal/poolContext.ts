/**
 * What the parts of one pool share: its options, its state, its metrics, and the fibers that
 * outlive a call. Built by `pool.ts`, read by the slot supervisor and the call paths.
 *
 * @internal
 */
import {
  Clock,
  Deferred,
  Duration,
  Effect,
  Exit,
  FiberId,
  FiberSet,
  Metric,
  MetricLabel,
  PubSub,
  SubscriptionRef
} from "effect"
import * as metrics from "../Metrics.js"
import type { ResolvedPoolOptions } from "../PoolOptions.js"
import type { PoolEvent, PoolEventInput } from "../PoolReport.js"
import type { PoolWorker } from "../WorkerFactory.js"
import { Latencies } from "./latency.js"
import { PoolState } from "./poolState.js"

/** One pool's shared parts. */
export interface PoolContext {
  readonly name: string
  readonly options: ResolvedPoolOptions
  readonly state: PoolState<PoolWorker>
  readonly metric: ReturnType<typeof poolMetrics>
  /** The number of ready workers, for `awaitReady`. */
  readonly readyCount: SubscriptionRef.SubscriptionRef<number>
  /** Publishes the gauges and the ready count, when they changed since the last time. */
  readonly publish: Effect.Effect<void>
  /**
   * Runs `effect` in the pool's lifetime, not the caller's (expiry loops, session cleanups, a
   * cancelled call's wait). Always interruptible: forked from a finalizer or an `onInterrupt`,
   * a fiber would inherit their uninterruptibility, and the pool's close could not stop it.
   */
  readonly runInBackground: <A, E>(effect: Effect.Effect<A, E>) => Effect.Effect<void>
  /** Per-tool latency over the last calls. */
  readonly latencies: Latencies
  /** Publishes an event of this pool, stamped with the clock's time. */
  readonly emit: (event: PoolEventInput) => Effect.Effect<void>
  /** Wakes the elastic scaler: the queue started, or the bounds changed. */
  readonly wakeScaler: () => void
  /** Completes at the next `wakeScaler`; the scaler waits on it between its checks. */
  readonly scalerWoken: () => Deferred.Deferred<void>
  /** The per-tool metrics of this pool, made once per tool. */
  readonly toolMetrics: (tool: string) => ToolMetrics
}

/**
 * One tool's metrics in one pool. Updated synchronously with tag arrays made once: a
 * `Metric.tagged` metric builds its tags and looks its series up on every update, several µs each
 * on the hot path (docs/adr/0004).
 */
export interface ToolMetrics {
  readonly duration: (seconds: number, failed: boolean) => void
  readonly queueWait: (seconds: number) => void
  readonly inFlight: (calls: number) => void
  /** Calls of the tool running now. */
  running: number
}

const poolMetrics = (name: string) => ({
  requests: Metric.tagged(metrics.requests, "pool", name),
  errors: Metric.tagged(metrics.errors, "pool", name),
  queueTimeouts: Metric.tagged(metrics.queueTimeouts, "pool", name),
  restarts: Metric.tagged(metrics.restarts, "pool", name),
  ready: Metric.tagged(metrics.ready, "pool", name),
  busy: Metric.tagged(metrics.busy, "pool", name),
  queued: Metric.tagged(metrics.queued, "pool", name),
  stuckCalls: Metric.tagged(metrics.stuckCalls, "pool", name),
  sessionFallbacks: Metric.tagged(metrics.sessionFallbacks, "pool", name),
  crashes: Metric.tagged(metrics.crashes, "pool", name),
  workerRss: Metric.tagged(metrics.workerRss, "pool", name),
  droppedLogs: Metric.tagged(metrics.droppedLogs, "pool", name),
  droppedSpans: Metric.tagged(metrics.droppedSpans, "pool", name)
})

/** Tools with series of their own per pool. */
const MAX_TOOL_SERIES = 256

/** The shared parts of pool `options.name`, with an empty state; its background fibers end with the scope. */
export const make = (options: ResolvedPoolOptions, events: PubSub.PubSub<PoolEvent>) =>
  Effect.gen(function* () {
    const background = yield* FiberSet.make()
    const name = options.name
    const state = new PoolState<PoolWorker>({
      pool: name,
      capacity: options.capacity,
      queueMax: options.queue.max,
      queueTimeoutMs: Duration.toMillis(options.queue.timeout),
      maxCalls: options.recycle.maxCalls,
      sessionsMax: options.sessions.max
    })
    const metric = poolMetrics(name)
    const readyCount = yield* SubscriptionRef.make(0)

    // Gauges and the ready count are published only when they change: this runs twice per call.
    const published = { ready: -1, busy: -1, queued: -1 }
    const publish = Effect.suspend(() => {
      const { ready, busy } = state.occupancy()
      const queued = state.waiters.length
      const updates: Array<Effect.Effect<void>> = []
      if (ready !== published.ready)
        updates.push(SubscriptionRef.set(readyCount, ready), Metric.set(metric.ready, ready))
      if (busy !== published.busy) updates.push(Metric.set(metric.busy, busy))
      if (queued !== published.queued) updates.push(Metric.set(metric.queued, queued))
      published.ready = ready
      published.busy = busy
      published.queued = queued
      return updates.length === 0 ? Effect.void : Effect.all(updates, { discard: true })
    })

    const emit = (event: PoolEventInput) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        PubSub.publish(events, { ...event, pool: name, at: new Date(now) } as PoolEvent)
      ).pipe(Effect.asVoid)

    let woken = Deferred.unsafeMake<void>(FiberId.none)
    let wokenDone = false
    const wakeScaler = () => {
      if (wokenDone) return
      wokenDone = true
      Deferred.unsafeDone(woken, Exit.void)
    }
    const scalerWoken = () => {
      if (wokenDone) {
        woken = Deferred.unsafeMake<void>(FiberId.none)
        wokenDone = false
      }
      return woken
    }

    const tools = new Map<string, ToolMetrics>()
    const toolMetrics = (called: string): ToolMetrics => {
      // Tool names come from callers: past a bound, the rest share one series (no unbounded tags).
      const tool = tools.size >= MAX_TOOL_SERIES && !tools.has(called) ? "(other)" : called
      let found = tools.get(tool)
      if (found === undefined) {
        const tags = [MetricLabel.make("pool", name), MetricLabel.make("tool", tool)]
        const succeeded = [...tags, MetricLabel.make("outcome", "success")]
        const failed = [...tags, MetricLabel.make("outcome", "failure")]
        found = {
          duration: (seconds, isFailure) => metrics.callDuration.unsafeUpdate(seconds, isFailure ? failed : succeeded),
          queueWait: (seconds) => metrics.queueWait.unsafeUpdate(seconds, tags),
          inFlight: (calls) => metrics.inFlight.unsafeUpdate(calls, tags),
          running: 0
        }
        tools.set(tool, found)
      }
      return found
    }

    return {
      name,
      options,
      state,
      metric,
      readyCount,
      publish,
      runInBackground: (effect) => FiberSet.run(background, Effect.interruptible(effect)).pipe(Effect.asVoid),
      latencies: new Latencies(),
      emit,
      wakeScaler,
      scalerWoken,
      toolMetrics
    } satisfies PoolContext
  })
