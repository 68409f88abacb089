/**
 * One pool of workers, composed of three parts: its state (`poolState.ts`: plain data with
 * named transitions), its slot supervisor (`slots.ts`: start, serve, restart, the startup
 * window) and its call paths (`poolCalls.ts`). The pool's internal records never leave these
 * modules: callers name workers by id.
 *
 * @internal
 */
import { Duration, Effect, FiberSet, Schedule, type Scope, Stream } from "effect"
import {
  type CallError,
  type PoolClosed,
  type PoolStartError,
  WorkerNotFound,
  type WorkerStartError
} from "../errors.js"
import type { ResolvedPoolOptions } from "../PoolOptions.js"
import type { CallOptions, PoolStats, ToolDescription, WorkerInfo } from "../Snakepit.js"
import { WorkerFactory } from "../WorkerFactory.js"
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
export const make = (options: ResolvedPoolOptions): Effect.Effect<Pool, PoolStartError, Scope.Scope | WorkerFactory> =>
  Effect.gen(function* () {
    const factory = yield* WorkerFactory
    const name = options.name
    const idPrefix = yield* claimIdPrefix(name)
    const background = yield* FiberSet.make()
    const ctx = yield* PoolContext.make(options, background)
    const { state } = ctx
    const calls = PoolCalls.make(ctx)
    const supervisor = yield* Slots.make(ctx, factory, idPrefix)
    // Runs before the slot fibers are interrupted (finalizers run in reverse): no new leases, no restarts.
    yield* Effect.addFinalizer(() => supervisor.close)
    yield* FiberSet.run(background, calls.expireWaiters)
    yield* FiberSet.run(
      background,
      Effect.repeat(
        calls.expireSessions,
        // Expiry is checked four times per TTL, so a session outlives its TTL by at most a quarter.
        Schedule.spaced(Duration.max(Duration.millis(100), Duration.times(options.sessions.ttl, 0.25)))
      )
    )
    yield* supervisor.start

    /** A live worker that is not leaving, by id: the one lookup path of stop and restart (LESSONS #2, #3). */
    const live = (workerId: string) =>
      Effect.suspend(() => {
        const entry = state.get(workerId)
        return entry !== undefined && entry.retiring === undefined
          ? Effect.succeed(entry)
          : Effect.fail(new WorkerNotFound({ workerId }))
      })

    return {
      name,
      execute: calls.execute,
      executeStream: calls.executeStream,
      describeTools: calls.describeTools,
      stats: Effect.sync(() => ({
        pool: name,
        size: supervisor.size(),
        ...state.occupancy(),
        queued: state.waiters.length,
        ...state.counters
      })),
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
      )
    } satisfies Pool
  })
