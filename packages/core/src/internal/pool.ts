/**
 * One pool of workers: slots supervised as fibers, leases handed to callers FIFO, sessions
 * routed by affinity. All mutable state is touched only inside `Effect.sync` blocks, which
 * never interleave, so every transition below is atomic with respect to other fibers.
 */
import {
  Cause,
  Clock,
  Deferred,
  Duration,
  Effect,
  Either,
  Exit,
  FiberId,
  FiberSet,
  Metric,
  Schedule,
  Scope,
  Stream,
  SubscriptionRef
} from "effect"
import {
  type CallError,
  PoolClosed,
  PoolStartError,
  QueueFull,
  QueueTimeout,
  SessionWorkerUnavailable,
  WorkerBusy,
  type WorkerStartError
} from "../errors.js"
import * as metrics from "../Metrics.js"
import type { ResolvedPoolOptions } from "../PoolOptions.js"
import type { CallOptions, PoolStats, ToolDescription, WorkerInfo } from "../Snakepit.js"
import * as Worker from "../Worker.js"
import { type PoolWorker, WorkerFactory } from "../WorkerFactory.js"
import { withCallSpan } from "./tracing.js"

/** Why a worker leaves the pool. */
type RetireReason =
  | { readonly _tag: "Crashed"; readonly status: Worker.ExitStatus }
  | { readonly _tag: "Unhealthy"; readonly detail: string }
  | { readonly _tag: "Recycle"; readonly why: "maxCalls" | "ttl" | "rss" }
  | { readonly _tag: "Restart" }
  | { readonly _tag: "Stop" }

const describeReason = (reason: RetireReason): string => {
  switch (reason._tag) {
    case "Crashed":
      return reason.status.signal ? `crashed (${reason.status.signal})` : `crashed (exit ${reason.status.code})`
    case "Unhealthy":
      return `unhealthy: ${reason.detail}`
    case "Recycle":
      return `recycled (${reason.why})`
    case "Restart":
      return "restarted"
    case "Stop":
      return "stopped"
  }
}

/** A live worker in the pool. */
interface Entry {
  readonly worker: PoolWorker
  readonly slot: Slot
  inUse: number
  calls: number
  /** Order of the last release: the idle worker released longest ago is served first. */
  releasedAt: number
  retiring: RetireReason | undefined
  readonly retire: Deferred.Deferred<RetireReason>
  readonly drained: Deferred.Deferred<void>
  /** Completes once the worker's scope is closed: its process is gone. */
  readonly gone: Deferred.Deferred<void>
}

interface Slot {
  readonly index: number
  generation: number
  entry: Entry | undefined
  stopped: boolean
  readonly firstOutcome: Deferred.Deferred<void, WorkerStartError>
  /** Set by restartWorker: completes with the replacement, or its start failure. */
  replacement: Deferred.Deferred<Entry, WorkerStartError | PoolClosed> | undefined
}

interface Waiter {
  /** A specific worker (strict session affinity), or any. */
  readonly target: Entry | undefined
  readonly deferred: Deferred.Deferred<Entry, SessionWorkerUnavailable | PoolClosed | QueueTimeout>
  /** Clock time at which the wait fails with `QueueTimeout`. */
  readonly deadline: number
  handed: Entry | undefined
}

interface Binding {
  entry: Entry
  lastUsed: number
  /** Why the bound worker left; the next call reports it (strict) or rebinds (hint). */
  lost: string | undefined
}

/** A running pool. */
export interface Pool {
  readonly name: string
  readonly execute: (tool: string, args: unknown, options: CallOptions) => Effect.Effect<unknown, CallError>
  readonly executeStream: (tool: string, args: unknown, options: CallOptions) => Stream.Stream<unknown, CallError>
  readonly describeTools: Effect.Effect<ReadonlyArray<ToolDescription>, CallError>
  readonly stats: Effect.Effect<PoolStats>
  readonly workers: Effect.Effect<ReadonlyArray<WorkerInfo>>
  readonly find: (workerId: string) => Entry | undefined
  readonly stopWorker: (entry: Entry) => Effect.Effect<void>
  readonly restartWorker: (entry: Entry) => Effect.Effect<WorkerInfo, WorkerStartError | PoolClosed>
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
export const make = (
  options: ResolvedPoolOptions,
  host: Pick<Worker.WorkerOptions, "hostTools" | "hostBridge"> = {}
): Effect.Effect<Pool, PoolStartError, Scope.Scope | WorkerFactory> =>
  Effect.gen(function* () {
    const factory = yield* WorkerFactory
    const name = options.name
    const idPrefix = yield* claimIdPrefix(name)
    const metric = {
      requests: Metric.tagged(metrics.requests, "pool", name),
      errors: Metric.tagged(metrics.errors, "pool", name),
      queueTimeouts: Metric.tagged(metrics.queueTimeouts, "pool", name),
      restarts: Metric.tagged(metrics.restarts, "pool", name),
      ready: Metric.tagged(metrics.ready, "pool", name),
      busy: Metric.tagged(metrics.busy, "pool", name),
      queued: Metric.tagged(metrics.queued, "pool", name),
      stuckCalls: Metric.tagged(metrics.stuckCalls, "pool", name)
    }
    const entries = new Map<string, Entry>()
    const waiters: Array<Waiter> = []
    const sessions = new Map<string, Binding>()
    const counters = { requests: 0, errors: 0, queueTimeouts: 0, restarts: 0 }
    let releaseSeq = 0
    let closed = false
    const slots: Array<Slot> = []
    const readyCount = yield* SubscriptionRef.make(0)
    const background = yield* FiberSet.make()

    const workerOptions: Worker.WorkerOptions = {
      adapter: options.adapter,
      ...(options.python === undefined ? {} : { python: options.python }),
      pythonPath: options.pythonPath,
      env: options.env,
      threadLimits: options.threadLimits,
      startupTimeout: options.startupTimeout,
      gracefulTimeout: options.gracefulTimeout,
      maxMessageBytes: options.maxMessageBytes,
      transport: options.transport,
      concurrency: options.capacity,
      grpcListen: options.grpc.listen,
      ...host
    }

    /** Workers able to serve, and those of them serving a call. */
    const occupancy = () => {
      let ready = 0
      let busy = 0
      for (const entry of entries.values()) {
        if (entry.retiring !== undefined) continue
        ready++
        if (entry.inUse > 0) busy++
      }
      return { ready, busy }
    }

    // Gauges and the ready count are published only when they change: this runs twice per call.
    const published = { ready: -1, busy: -1, queued: -1 }
    const publish = Effect.suspend(() => {
      const { ready, busy } = occupancy()
      const updates: Array<Effect.Effect<void>> = []
      if (ready !== published.ready) {
        updates.push(SubscriptionRef.set(readyCount, ready), Metric.set(metric.ready, ready))
      }
      if (busy !== published.busy) updates.push(Metric.set(metric.busy, busy))
      if (waiters.length !== published.queued) updates.push(Metric.set(metric.queued, waiters.length))
      published.ready = ready
      published.busy = busy
      published.queued = waiters.length
      return updates.length === 0 ? Effect.void : Effect.all(updates, { discard: true })
    })

    // ---- leases -------------------------------------------------------------------------

    /** Gives free capacity of `entry` to the first waiters that accept it, in arrival order. */
    const handOff = (entry: Entry) => {
      for (let i = 0; i < waiters.length && entry.inUse < options.capacity; ) {
        const waiter = waiters[i]!
        if (waiter.target !== undefined && waiter.target !== entry) {
          i++
          continue
        }
        waiters.splice(i, 1)
        entry.inUse++
        waiter.handed = entry
        Deferred.unsafeDone(waiter.deferred, Exit.succeed(entry))
      }
    }

    const tryTake = (entry: Entry): boolean => {
      if (entry.retiring !== undefined || entry.inUse >= options.capacity) return false
      entry.inUse++
      return true
    }

    const pickIdle = (): Entry | undefined => {
      let best: Entry | undefined
      for (const entry of entries.values()) {
        if (entry.retiring !== undefined || entry.inUse >= options.capacity) continue
        if (best === undefined || entry.releasedAt < best.releasedAt) best = entry
      }
      if (best) best.inUse++
      return best
    }

    /** Marks a worker as leaving: no new leases, targeted waiters fail, sessions learn it at once. */
    const startRetire = (entry: Entry, reason: RetireReason) => {
      if (entry.retiring !== undefined) return
      entry.retiring = reason
      const why = describeReason(reason)
      for (let i = waiters.length - 1; i >= 0; i--) {
        const waiter = waiters[i]!
        if (waiter.target !== entry) continue
        waiters.splice(i, 1)
        Deferred.unsafeDone(
          waiter.deferred,
          Exit.fail(new SessionWorkerUnavailable({ session: "", workerId: entry.worker.id, reason: why }))
        )
      }
      for (const binding of sessions.values()) if (binding.entry === entry) binding.lost = why
      Deferred.unsafeDone(entry.retire, Exit.succeed(reason))
      if (entry.inUse === 0) Deferred.unsafeDone(entry.drained, Exit.void)
    }

    const release = (entry: Entry) =>
      Effect.suspend(() => {
        entry.inUse--
        entry.calls++
        entry.releasedAt = ++releaseSeq
        const maxCalls = options.recycle.maxCalls
        if (maxCalls !== undefined && entry.calls >= maxCalls) startRetire(entry, { _tag: "Recycle", why: "maxCalls" })
        if (entry.retiring === undefined) handOff(entry)
        else if (entry.inUse === 0) Deferred.unsafeDone(entry.drained, Exit.void)
        return publish
      })

    // Queue timeouts: one fiber fails expired waiters, instead of a timeout fiber per waiter
    // (which cost more than the rest of a queued call; see bench/). Every waiter has the same
    // timeout and joins at the back, so deadlines never decrease along the queue.
    const queueTimeoutMs = Duration.toMillis(options.queue.timeout)
    let queueNotEmpty = Deferred.unsafeMake<void>(FiberId.none)

    const expireWaiters = Effect.gen(function* () {
      while (true) {
        const idle = yield* Effect.sync(() => {
          if (waiters.length > 0) return undefined
          queueNotEmpty = Deferred.unsafeMake<void>(FiberId.none)
          return queueNotEmpty
        })
        if (idle) {
          yield* Deferred.await(idle)
          continue
        }
        const now = yield* Clock.currentTimeMillis
        const first = waiters[0]!.deadline
        if (first > now) {
          yield* Effect.sleep(Duration.millis(first - now))
          continue
        }
        while (waiters.length > 0 && waiters[0]!.deadline <= now) {
          const expired = waiters.shift()!
          Deferred.unsafeDone(expired.deferred, Exit.fail(new QueueTimeout({ pool: name, timeoutMs: queueTimeoutMs })))
        }
      }
    })

    /** Waits in the queue for `target` (or any worker). Safe to call uninterruptibly: the wait itself is restored. */
    const waitFor = (
      target: Entry | undefined,
      restore: <A, E, R>(e: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
    ): Effect.Effect<Entry, QueueFull | SessionWorkerUnavailable | PoolClosed | QueueTimeout> =>
      Effect.clockWith(
        (clock): Effect.Effect<Entry, QueueFull | SessionWorkerUnavailable | PoolClosed | QueueTimeout> => {
          if (waiters.length >= options.queue.max) {
            return Effect.fail(new QueueFull({ pool: name, max: options.queue.max }))
          }
          const waiter: Waiter = {
            target,
            deferred: Deferred.unsafeMake<Entry, SessionWorkerUnavailable | PoolClosed | QueueTimeout>(FiberId.none),
            deadline: clock.unsafeCurrentTimeMillis() + queueTimeoutMs,
            handed: undefined
          }
          waiters.push(waiter)
          if (waiters.length === 1) Deferred.unsafeDone(queueNotEmpty, Exit.void)
          return Effect.zipRight(
            publish,
            restore(Deferred.await(waiter.deferred)).pipe(
              Effect.onExit((exit) =>
                Effect.suspend(() => {
                  if (Exit.isSuccess(exit)) return Effect.void
                  const index = waiters.indexOf(waiter)
                  if (index >= 0) waiters.splice(index, 1)
                  if (exit.cause._tag === "Fail" && exit.cause.error._tag === "QueueTimeout") {
                    counters.queueTimeouts++
                    return Effect.zipRight(Metric.increment(metric.queueTimeouts), publish)
                  }
                  // Handed a worker in the same instant we were interrupted: pass it on, never leak it.
                  return waiter.handed ? release(waiter.handed) : publish
                })
              )
            )
          )
        }
      )

    const takeAny = (restore: Parameters<typeof waitFor>[1]) =>
      Effect.suspend(() => {
        const idle = pickIdle()
        return idle ? Effect.succeed(idle) : waitFor(undefined, restore)
      })

    const bind = (session: string, entry: Entry) =>
      Effect.gen(function* () {
        sessions.set(session, { entry, lastUsed: yield* Clock.currentTimeMillis, lost: undefined })
        while (sessions.size > options.sessions.max) {
          const [oldest, binding] = sessions.entries().next().value as [string, Binding]
          sessions.delete(oldest)
          yield* cleanupInWorker(oldest, binding)
        }
      })

    const checkout = (session: string | undefined, restore: Parameters<typeof waitFor>[1]) =>
      Effect.suspend(() =>
        closed
          ? Effect.fail(new PoolClosed({ pool: name }))
          : session === undefined
            ? takeAny(restore)
            : checkoutSession(session, restore)
      )

    const checkoutSession = (session: string, restore: Parameters<typeof waitFor>[1]) =>
      Effect.gen(function* () {
        const binding = sessions.get(session)
        if (binding === undefined || binding.lost !== undefined) {
          if (binding !== undefined) {
            // Invalidated the moment its worker left (LESSONS #14): never route to it again.
            sessions.delete(session)
            if (options.affinity !== "hint") {
              return yield* new SessionWorkerUnavailable({
                session,
                workerId: binding.entry.worker.id,
                reason: binding.lost!
              })
            }
          }
          const entry = yield* takeAny(restore)
          yield* bind(session, entry)
          return entry
        }
        // Most recently used last, so the first key is the one to evict.
        sessions.delete(session)
        sessions.set(session, binding)
        binding.lastUsed = yield* Clock.currentTimeMillis
        if (tryTake(binding.entry)) return binding.entry
        switch (options.affinity) {
          case "hint":
            return yield* takeAny(restore)
          case "strict_fail_fast":
            return yield* new WorkerBusy({ workerId: binding.entry.worker.id, session })
          case "strict_queue":
            return yield* waitFor(binding.entry, restore).pipe(
              Effect.mapError((e) =>
                e._tag === "SessionWorkerUnavailable" ? new SessionWorkerUnavailable({ ...e, session }) : e
              )
            )
        }
      })

    const runOn = (entry: Entry, tool: string, args: Worker.EncodedArgs, call: CallOptions) => {
      const timeout = call.timeout === undefined ? options.callTimeout : Duration.decode(call.timeout)
      return entry.worker
        .executeEncoded(tool, args, {
          ...(call.session === undefined ? {} : { session: call.session }),
          ...(call.attachments === undefined ? {} : { attachments: call.attachments }),
          ...(Duration.isFinite(timeout) ? { timeout } : {})
        })
        .pipe(
          // A worker that does not even answer a health probe now (frozen, overloaded) is
          // retired at once rather than after the cancel grace.
          Effect.tapErrorTag("CallTimeout", () =>
            entry.worker.health(options.healthCheck.timeout).pipe(
              Effect.either,
              Effect.flatMap((health) =>
                Either.isLeft(health)
                  ? Effect.sync(() =>
                      startRetire(entry, { _tag: "Unhealthy", detail: "no answer after a cancelled call" })
                    )
                  : Effect.void
              )
            )
          )
        )
    }

    /**
     * Returns a lease whose call was cancelled once the worker says the call really stopped: the
     * worker is not handed out while a tool it was told to drop still runs. A call still running
     * after `cancelGrace` retires the worker. In the background: the caller already has its answer.
     */
    const releaseWhenSettled = (entry: Entry, tool: string) =>
      FiberSet.run(
        background,
        entry.worker.settled.pipe(
          Effect.timeout(options.cancelGrace),
          Effect.catchTag("TimeoutException", () =>
            Effect.zipRight(
              Effect.logWarning(
                `worker ${entry.worker.id}: a cancelled call to "${tool}" still runs ${Duration.format(options.cancelGrace)} ` +
                  "later (a tool blocked where Python cannot interrupt it); replacing the worker"
              ),
              Effect.zipRight(
                Metric.increment(Metric.tagged(metric.stuckCalls, "tool", tool)),
                Effect.sync(() =>
                  startRetire(entry, {
                    _tag: "Unhealthy",
                    detail: `a cancelled call to "${tool}" still ran after ${Duration.format(options.cancelGrace)}`
                  })
                )
              )
            )
          ),
          Effect.ensuring(release(entry))
        )
      ).pipe(Effect.asVoid)

    /** A call that ended by cancellation (interruption, timeout) may still run in Python. */
    const wasCancelled = (exit: Exit.Exit<unknown, CallError>) =>
      Exit.isInterrupted(exit) ||
      (Exit.isFailure(exit) &&
        Cause.failureOption(exit.cause).pipe((e) => e._tag === "Some" && e.value._tag === "CallTimeout"))

    const countError = Effect.zipRight(
      Effect.sync(() => counters.errors++),
      Metric.increment(metric.errors)
    )

    const countRequest = Effect.zipRight(
      Effect.sync(() => counters.requests++),
      Metric.increment(metric.requests)
    )

    // The hot path: plain combinators, no generator, no span under the built-in tracer (ADR 0004).
    const execute = (tool: string, args: unknown, call: CallOptions): Effect.Effect<unknown, CallError> =>
      Effect.zipRight(
        countRequest,
        Effect.flatMap(Worker.encodeArgs(tool, args), (encoded) =>
          Effect.uninterruptibleMask((restore) =>
            Effect.flatMap(checkout(call.session, restore), (entry) =>
              Effect.zipRight(publish, restore(runOn(entry, tool, encoded, call))).pipe(
                Effect.onExit((exit) => (wasCancelled(exit) ? releaseWhenSettled(entry, tool) : release(entry)))
              )
            )
          )
        )
      ).pipe(
        Effect.tapError(() => countError),
        withCallSpan("snakepit.pool.execute", () => ({ pool: name, tool }))
      )

    const executeStream = (tool: string, args: unknown, call: CallOptions): Stream.Stream<unknown, CallError> =>
      Stream.unwrapScoped(
        Effect.gen(function* () {
          counters.requests++
          yield* Metric.increment(metric.requests)
          const encoded = yield* Worker.encodeArgs(tool, args)
          const scope = yield* Effect.scope
          // The lease is tied to the stream's scope: held while the stream runs, returned however it
          // ends; a stream ended early (or timed out) first lets its generator stop.
          let finished = false
          const entry = yield* Effect.uninterruptibleMask((restore) =>
            Effect.tap(checkout(call.session, restore), (entry) =>
              Scope.addFinalizer(
                scope,
                Effect.suspend(() => (finished ? release(entry) : releaseWhenSettled(entry, tool)))
              )
            )
          )
          yield* publish
          const idle = call.timeout === undefined ? options.callTimeout : Duration.decode(call.timeout)
          return entry.worker
            .executeStream(tool, encoded, {
              ...(call.session === undefined ? {} : { session: call.session }),
              ...(call.attachments === undefined ? {} : { attachments: call.attachments }),
              ...(call.buffer === undefined ? {} : { window: call.buffer }),
              ...(Duration.isFinite(idle) ? { idleTimeout: idle } : {})
            })
            .pipe(
              Stream.onEnd(
                Effect.sync(() => {
                  finished = true
                })
              ),
              // The worker ended the stream (an error from the tool, a crash): nothing runs on.
              Stream.tapError((error) =>
                Effect.sync(() => {
                  finished = error._tag !== "CallTimeout"
                })
              )
            )
        })
      ).pipe(
        Stream.tapError(() => countError),
        Stream.withSpan("snakepit.pool.executeStream", { attributes: { pool: name, tool }, captureStackTrace: false })
      )

    /** Asks one worker (through the queue, like any call) for the adapter's tools. */
    const describeTools = Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(checkout(undefined, restore), (entry) =>
        restore(entry.worker.describeTools).pipe(Effect.ensuring(release(entry)))
      )
    )

    // ---- sessions ----------------------------------------------------------------------

    const cleanupInWorker = (session: string, binding: Binding) =>
      binding.lost !== undefined || binding.entry.retiring !== undefined
        ? Effect.void
        : FiberSet.run(
            background,
            binding.entry.worker.cleanupSession(session).pipe(
              Effect.tapError((e) => Effect.logDebug(`session ${session} cleanup failed: ${e.message}`)),
              Effect.either
            )
          ).pipe(Effect.asVoid)

    const expireSessions = Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      const ttl = Duration.toMillis(options.sessions.ttl)
      for (const [session, binding] of [...sessions]) {
        if (now - binding.lastUsed < ttl) continue
        sessions.delete(session)
        yield* cleanupInWorker(session, binding)
      }
    })

    // ---- supervision -------------------------------------------------------------------

    const healthLoop = (entry: Entry): Effect.Effect<RetireReason> =>
      Effect.gen(function* () {
        let misses = 0
        while (true) {
          yield* Effect.sleep(options.healthCheck.interval)
          const health = yield* Effect.either(entry.worker.health(options.healthCheck.timeout))
          if (Either.isLeft(health) || !health.right.ok) {
            misses++
            if (misses >= options.healthCheck.maxMisses) {
              const why = Either.isLeft(health) ? health.left.message : health.right.detail
              return { _tag: "Unhealthy", detail: `${misses} health checks missed: ${why}` } as const
            }
            continue
          }
          misses = 0
          const maxRssMb = options.recycle.maxRssMb
          if (maxRssMb !== undefined && health.right.rssBytes > maxRssMb * 1024 * 1024) {
            return { _tag: "Recycle", why: "rss" } as const
          }
        }
      })

    const register = (slot: Slot, worker: PoolWorker) =>
      Effect.gen(function* () {
        const entry: Entry = {
          worker,
          slot,
          inUse: 0,
          calls: 0,
          releasedAt: ++releaseSeq,
          retiring: undefined,
          retire: yield* Deferred.make<RetireReason>(),
          drained: yield* Deferred.make<void>(),
          gone: yield* Deferred.make<void>()
        }
        entries.set(worker.id, entry)
        slot.entry = entry
        handOff(entry)
        yield* Deferred.succeed(slot.firstOutcome, undefined)
        if (slot.replacement) yield* Deferred.succeed(slot.replacement, entry)
        yield* publish
        return entry
      })

    /** One generation of a slot: start a worker, serve until it must leave, drain it if graceful. */
    const serveOnce = (slot: Slot) =>
      Effect.gen(function* () {
        slot.generation++
        const id = `${idPrefix}-${slot.index + 1}.${slot.generation}`
        const started = yield* Effect.either(factory.spawn({ ...workerOptions, id }))
        if (Either.isLeft(started)) {
          const error = started.left
          if (error._tag === "ConfigError") return yield* Effect.die(error) // options were validated up front
          yield* Effect.logWarning(`worker ${id} failed to start: ${error.message}`)
          yield* Deferred.fail(slot.firstOutcome, error)
          if (slot.replacement) yield* Deferred.fail(slot.replacement, error)
          return { _tag: "StartFailed" } as const
        }
        const entry = yield* register(slot, started.right)
        const ttl = options.recycle.ttl
        const reason = yield* Effect.raceAll([
          Effect.map(entry.worker.exited, (status): RetireReason => ({ _tag: "Crashed", status })),
          Effect.map(entry.worker.failed, (detail): RetireReason => ({ _tag: "Unhealthy", detail })),
          Deferred.await(entry.retire),
          healthLoop(entry),
          ttl === undefined ? Effect.never : Effect.as(Effect.sleep(ttl), { _tag: "Recycle", why: "ttl" } as const)
        ])
        yield* Effect.sync(() => startRetire(entry, reason))
        yield* publish
        if (reason._tag !== "Crashed" && reason._tag !== "Unhealthy") {
          // Graceful: let the calls in flight finish, unless the process dies meanwhile.
          yield* Effect.raceFirst(
            Deferred.await(entry.drained).pipe(Effect.timeout(options.drainTimeout), Effect.option),
            entry.worker.exited
          )
        }
        yield* Effect.logInfo(`worker ${id} ${describeReason(reason)}`)
        return reason
      })

    /** Removes the slot's worker once its scope is closed, i.e. once its process is gone. */
    const forget = (slot: Slot) =>
      Effect.suspend(() => {
        const entry = slot.entry
        if (entry === undefined) return Effect.void
        entries.delete(entry.worker.id)
        slot.entry = undefined
        return Effect.zipRight(Deferred.succeed(entry.gone, undefined), publish)
      })

    const backoff = Schedule.exponential(options.restart.baseDelay).pipe(
      Schedule.jittered,
      Schedule.modifyDelay((delay) => Duration.min(delay, options.restart.maxDelay))
    )

    const runSlot = (slot: Slot) =>
      Effect.gen(function* () {
        const driver = yield* Schedule.driver(backoff)
        let recentRestarts: Array<number> = []
        while (!slot.stopped) {
          // `gone` completes however the generation ends, interruption by pool close included.
          const outcome = yield* Effect.scoped(serveOnce(slot)).pipe(Effect.ensuring(forget(slot)))
          if (slot.stopped || closed) return
          counters.restarts++
          yield* Metric.increment(metric.restarts)
          if (outcome._tag === "Recycle" || outcome._tag === "Restart") {
            yield* driver.reset
            continue
          }
          const now = yield* Clock.currentTimeMillis
          recentRestarts = [...recentRestarts.filter((t) => now - t < Duration.toMillis(options.restart.window)), now]
          if (recentRestarts.length > options.restart.maxRestarts) {
            yield* Effect.logError(
              `pool ${name} slot ${slot.index + 1}: ${recentRestarts.length} restarts within ` +
                `${Duration.format(options.restart.window)}; cooling down for ${Duration.format(options.restart.cooldown)}`
            )
            yield* Effect.sleep(options.restart.cooldown)
            recentRestarts = []
            yield* driver.reset
            continue
          }
          if (outcome._tag !== "StartFailed") yield* driver.reset
          yield* Effect.ignore(driver.next(undefined))
        }
      }).pipe(Effect.annotateLogs({ pool: name, slot: slot.index + 1 }))

    // ---- startup -----------------------------------------------------------------------

    const slotFibers = yield* FiberSet.make()
    // Runs before the slot fibers are interrupted (finalizers run in reverse): no new leases, no restarts.
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        closed = true
        const poolClosed = Exit.fail(new PoolClosed({ pool: name }))
        for (const waiter of waiters.splice(0)) Deferred.unsafeDone(waiter.deferred, poolClosed)
        for (const slot of slots) if (slot.replacement) Deferred.unsafeDone(slot.replacement, poolClosed)
      })
    )
    yield* FiberSet.run(background, expireWaiters)
    yield* FiberSet.run(
      background,
      Effect.repeat(
        expireSessions,
        // Expiry is checked four times per TTL, so a session outlives its TTL by at most a quarter.
        Schedule.spaced(Duration.max(Duration.millis(100), Duration.times(options.sessions.ttl, 0.25)))
      )
    )

    // A rolling window: at most `startupBatchSize` workers start at once, and a place in it is
    // given to the next worker `startupBatchDelay` after its worker is ready or failed, so the
    // machine never idles waiting for the slowest worker of a batch.
    const failures: Array<WorkerStartError> = []
    const tooManyFailures = () => failures.length > options.size - options.minReady
    const window = yield* Effect.makeSemaphore(options.startupBatchSize)
    const windowKeepers = yield* FiberSet.make<void, never>()
    for (let index = 0; index < options.size && !tooManyFailures(); index++) {
      yield* window.take(1)
      if (tooManyFailures()) break
      const slot: Slot = {
        index,
        generation: 0,
        entry: undefined,
        stopped: false,
        firstOutcome: yield* Deferred.make<void, WorkerStartError>(),
        replacement: undefined
      }
      slots.push(slot)
      yield* FiberSet.run(slotFibers, runSlot(slot))
      yield* FiberSet.run(
        windowKeepers,
        Deferred.await(slot.firstOutcome).pipe(
          Effect.catchTag("WorkerStartError", (error) => Effect.sync(() => failures.push(error))),
          Effect.zipRight(Effect.sleep(options.startupBatchDelay)),
          Effect.ensuring(window.release(1))
        )
      )
    }
    // Every first outcome, read from the slots themselves (the window keepers may not have run
    // yet); unless startup already failed: the workers still starting then stop with the scope.
    const failed: Array<WorkerStartError> = tooManyFailures() ? failures : []
    if (!tooManyFailures()) {
      for (const slot of slots) {
        const outcome = yield* Effect.either(Deferred.await(slot.firstOutcome))
        if (Either.isLeft(outcome)) failed.push(outcome.left)
      }
    }
    if (failed.length > options.size - options.minReady) {
      return yield* new PoolStartError({
        pool: name,
        detail: `${failed.length} of ${options.size} workers failed to start; ${options.minReady} must be ready`,
        causes: failed
      })
    }

    const toInfo = (entry: Entry): WorkerInfo => ({
      id: entry.worker.id,
      pool: name,
      pid: entry.worker.pid,
      state: entry.retiring !== undefined ? "stopping" : entry.inUse > 0 ? "busy" : "ready",
      calls: entry.calls,
      startedAt: entry.worker.startedAt
    })

    return {
      name,
      execute,
      executeStream,
      describeTools,
      stats: Effect.sync(() => {
        return {
          pool: name,
          size: slots.filter((s) => !s.stopped).length,
          ...occupancy(),
          queued: waiters.length,
          ...counters
        }
      }),
      workers: Effect.sync(() => [...entries.values()].map(toInfo)),
      find: (workerId) => entries.get(workerId),
      stopWorker: (entry) =>
        Effect.suspend(() => {
          entry.slot.stopped = true
          startRetire(entry, { _tag: "Stop" })
          return Deferred.await(entry.gone)
        }),
      restartWorker: (entry) =>
        Effect.gen(function* () {
          if (closed) return yield* new PoolClosed({ pool: name })
          const replacement = yield* Deferred.make<Entry, WorkerStartError | PoolClosed>()
          entry.slot.replacement = replacement
          startRetire(entry, { _tag: "Restart" })
          // The old process must be gone before the restart counts as done (LESSONS #6).
          yield* Deferred.await(entry.gone)
          return toInfo(yield* Deferred.await(replacement))
        }),
      awaitReady: readyCount.changes.pipe(
        Stream.filter((ready) => ready >= slots.filter((s) => !s.stopped).length),
        Stream.take(1),
        Stream.runDrain
      )
    } satisfies Pool
  })
