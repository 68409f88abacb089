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
  type FiberSet,
  Metric,
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
  /** Fibers of the pool's lifetime that are not slots (expiry loops, session cleanups). */
  readonly background: FiberSet.FiberSet
  /** Per-tool latency over the last calls. */
  readonly latencies: Latencies
  /** Publishes an event of this pool, stamped with the clock's time. */
  readonly emit: (event: PoolEventInput) => Effect.Effect<void>
  /** Wakes the elastic scaler: the queue started, or the bounds changed. */
  readonly wakeScaler: () => void
  /** Completes at the next `wakeScaler`; the scaler waits on it between its checks. */
  readonly scalerWoken: () => Deferred.Deferred<void>
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
  sessionFallbacks: Metric.tagged(metrics.sessionFallbacks, "pool", name)
})

/** The shared parts of pool `options.name`, with an empty state. */
export const make = (options: ResolvedPoolOptions, background: FiberSet.FiberSet, events: PubSub.PubSub<PoolEvent>) =>
  Effect.gen(function* () {
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

    return {
      name,
      options,
      state,
      metric,
      readyCount,
      publish,
      background,
      latencies: new Latencies(),
      emit,
      wakeScaler,
      scalerWoken
    } satisfies PoolContext
  })
