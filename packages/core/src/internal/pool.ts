/**
 * One pool of workers, composed of three parts: its state (`poolState.ts`: plain data with
 * named transitions), its slot supervisor (`slots.ts`: start, serve, restart, the startup
 * window) and its call paths (`poolCalls.ts`). The pool's internal records never leave these
 * modules: callers name workers by id.
 *
 * @internal
 */
import { Clock, Deferred, Duration, Effect, type PubSub, Schedule, type Scope, Stream } from "effect"
import {
  type CallError,
  type ConfigError,
  type PoolClosed,
  type PoolStartError,
  WorkerNotFound,
  type WorkerStartError
} from "../errors.js"
import type { PoolSize, ResolvedPoolOptions } from "../PoolOptions.js"
import { type PoolEvent, PoolReport, WorkerDetail } from "../PoolReport.js"
import type { CallOptions, PoolStats, ToolDescription, WorkerInfo } from "../Snakepit.js"
import type * as Worker from "../Worker.js"
import { WorkerFactory } from "../WorkerFactory.js"
import { type PoolSizeBounds, resolvePoolSize } from "./config.js"
import * as PoolCalls from "./poolCalls.js"
import * as PoolContext from "./poolContext.js"
import * as Slots from "./slots.js"

/** A running pool. */
export interface Pool {
  readonly name: string
  readonly execute: (tool: string, args: unknown, options: CallOptions) => Effect.Effect<unknown, CallError>
  readonly executeStream: (tool: string, args: unknown, options: CallOptions) => Stream.Stream<unknown, CallError>
  readonly describeTools: Effect.Effect<ReadonlyArray<ToolDescription>, CallError>
  readonly stats: Effect.Effect<PoolStats>
  readonly workers: Effect.Effect<ReadonlyArray<WorkerInfo>>
  /** True when `workerId` is a live worker of this pool that is not already leaving. */
  readonly hasWorker: (workerId: string) => boolean
  /** Stops a worker (after its calls finish) and does not replace it; completes once its process is gone. */
  readonly stopWorker: (workerId: string) => Effect.Effect<void, WorkerNotFound>
  /** Replaces a worker; completes with the replacement once the old process is gone. */
  readonly restartWorker: (
    workerId: string
  ) => Effect.Effect<WorkerInfo, WorkerNotFound | WorkerStartError | PoolClosed>
  readonly awaitReady: Effect.Effect<void>
  /** New size bounds; a bad size is a `ConfigError` keyed `size`. */
  readonly resize: (size: PoolSize) => Effect.Effect<PoolSizeBounds, ConfigError>
  /** Takes no new calls; completes once the calls in flight ended. */
  readonly drain: Effect.Effect<void>
  readonly report: Effect.Effect<PoolReport>
}

/**
 * Worker-id prefixes of the live pools of this process. Two live pools named "default" (two
 * `createPool()` calls) would otherwise both start `default-1.1` in the same run.
 */
const prefixesInUse = new Set<string>()

/**
 * `name` when no live pool uses it, else the first free `name#2`, `name#3`... Released after the
 * pool's workers are gone (it is acquired before them), so a reused prefix never meets a live id.
 */
const claimIdPrefix = (name: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      let prefix = name
      for (let n = 2; prefixesInUse.has(prefix); n++) prefix = `${name}#${n}`
      prefixesInUse.add(prefix)
      return prefix
    }),
    (prefix) => Effect.sync(() => prefixesInUse.delete(prefix))
  )

/** Starts a pool in the current scope; fails with `PoolStartError` when fewer than `minReady` workers start. */
export const make = (
  options: ResolvedPoolOptions,
  events: PubSub.PubSub<PoolEvent>,
  host: Pick<Worker.WorkerOptions, "hostTools" | "hostBridge"> = {}
): Effect.Effect<Pool, PoolStartError, Scope.Scope | WorkerFactory> =>
  Effect.gen(function* () {
    const factory = yield* WorkerFactory
    const name = options.name
    const idPrefix = yield* claimIdPrefix(name)
    const ctx = yield* PoolContext.make(options, events)
    const { state } = ctx
    const calls = PoolCalls.make(ctx)
    const supervisor = yield* Slots.make(ctx, factory, idPrefix, host)
    // Runs before the slot fibers are interrupted (finalizers run in reverse): no new leases, no restarts.
    yield* Effect.addFinalizer(() => supervisor.close)
    yield* ctx.runInBackground(calls.expireWaiters)
    yield* ctx.runInBackground(
      Effect.repeat(
        calls.expireSessions,
        // Expiry is checked four times per TTL, so a session outlives its TTL by at most a quarter.
        Schedule.spaced(Duration.max(Duration.millis(100), Duration.times(options.sessions.ttl, 0.25)))
      )
    )
    yield* supervisor.start
    yield* ctx.runInBackground(supervisor.scaler)

    /** A live worker that is not leaving, by id: the one lookup path of stop and restart (LESSONS #2, #3). */
    const live = (workerId: string) =>
      Effect.suspend(() => {
        const entry = state.get(workerId)
        return entry !== undefined && entry.retiring === undefined
          ? Effect.succeed(entry)
          : Effect.fail(new WorkerNotFound({ workerId }))
      })

    const stats = Effect.sync(
      (): PoolStats => ({
        pool: name,
        size: supervisor.size(),
        ...state.occupancy(),
        queued: state.waiters.length,
        ...state.counters
      })
    )

    const drain = Effect.suspend(() => {
      if (state.draining) return Deferred.await(state.drained)
      const inFlight = state.inFlight()
      state.drain()
      return ctx
        .emit({ _tag: "Draining", inFlight })
        .pipe(
          Effect.zipRight(ctx.publish),
          Effect.zipRight(Deferred.await(state.drained)),
          Effect.zipRight(ctx.emit({ _tag: "Drained" }))
        )
    })

    const report = Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Effect.map(stats, (current) => {
        const { max, min } = supervisor.bounds()
        return new PoolReport({
          pool: name,
          min,
          max,
          draining: state.draining,
          stats: current,
          workers: [...state.entries.values()].map((entry) => {
            const info = Slots.toInfo(name, entry)
            return new WorkerDetail({
              ...info,
              ageMs: now - entry.readyAt,
              rssBytes: entry.rssBytes ?? null,
              running: [...entry.running]
            })
          }),
          tools: ctx.latencies.summaries()
        })
      })
    )

    return {
      name,
      execute: calls.execute,
      executeStream: calls.executeStream,
      describeTools: calls.describeTools,
      stats,
      workers: Effect.sync(() => [...state.entries.values()].map((entry) => Slots.toInfo(name, entry))),
      hasWorker: (workerId) => {
        const entry = state.get(workerId)
        return entry !== undefined && entry.retiring === undefined
      },
      stopWorker: (workerId) => Effect.flatMap(live(workerId), supervisor.stop),
      restartWorker: (workerId) => Effect.flatMap(live(workerId), supervisor.restart),
      awaitReady: ctx.readyCount.changes.pipe(
        Stream.filter((ready) => ready >= supervisor.size()),
        Stream.take(1),
        Stream.runDrain
      ),
      resize: (size) => Effect.flatMap(resolvePoolSize(size), (bounds) => Effect.as(supervisor.resize(bounds), bounds)),
      drain,
      report
    } satisfies Pool
  })
