/**
 * The slot supervisor of one pool: each slot is a fiber that starts a worker in a child scope
 * through the `WorkerFactory`, serves it until it must leave (exit, failed health checks,
 * recycling, stop, restart), closes that scope, and starts again on an exponential, jittered
 * backoff with a bounded restart intensity (ADR 0001). Startup runs in a rolling window.
 *
 * @internal
 */
import { Clock, Deferred, Duration, Effect, Either, Exit, FiberId, FiberMap, Metric, Random, type Scope } from "effect"
import { PoolClosed, PoolStartError, type WorkerStartError } from "../errors.js"
import type { WorkerInfo } from "../Snakepit.js"
import type * as Worker from "../Worker.js"
import type { PoolWorker, WorkerFactory } from "../WorkerFactory.js"
import type { PoolSizeBounds } from "./config.js"
import type { PoolContext } from "./poolContext.js"
import { describeReason, type Entry, isGraceful, type RetireReason } from "./poolState.js"

type Live = Entry<PoolWorker>

interface Slot {
  /** Its key among the slot fibers. */
  readonly key: number
  /** Its place in worker ids (`<pool>-<index + 1>.<generation>`): the lowest free one. */
  readonly index: number
  generation: number
  entry: Live | undefined
  stopped: boolean
  /** A slot added after startup takes a place in the startup window for its first start... */
  readonly needsWindow: boolean
  /** ...and holds it until that start ends. */
  windowHeld: boolean
  /** The id of its previous worker, for the `Restarted` event. */
  previous: string | undefined
  readonly firstOutcome: Deferred.Deferred<void, WorkerStartError>
  /** Set by restartWorker: completes with the replacement, or its start failure. */
  replacement: Deferred.Deferred<Live, WorkerStartError | PoolClosed> | undefined
}

/** The slots of one pool. */
export interface Supervisor {
  /** Starts the pool's workers in the startup window; fails when fewer than `minReady` start. */
  readonly start: Effect.Effect<void, PoolStartError>
  /** Slots that are not stopped: the pool's size. */
  readonly size: () => number
  /** The size bounds now. */
  readonly bounds: () => PoolSizeBounds
  /** New bounds: starts or retires workers at once (idle ones first); the scaler keeps them. */
  readonly resize: (bounds: PoolSizeBounds) => Effect.Effect<void>
  /** Elastic pools: adds workers for callers waiting longer than `scaleUpAfter`, retires idle ones. */
  readonly scaler: Effect.Effect<never>
  /** Stops a worker (after its calls) and its slot; completes once its process is gone. */
  readonly stop: (entry: Live) => Effect.Effect<void>
  /** Replaces a worker; completes with the replacement once the old process is gone and the new one ready. */
  readonly restart: (entry: Live) => Effect.Effect<WorkerInfo, WorkerStartError | PoolClosed>
  /** The pool closes: pending restarts fail with `PoolClosed`, slots start nothing more. */
  readonly close: Effect.Effect<void>
}

/** A live worker as `workers()` shows it. */
export const toInfo = (pool: string, entry: Live): WorkerInfo => ({
  id: entry.worker.id,
  pool,
  pid: entry.worker.pid,
  state: entry.retiring !== undefined ? "stopping" : entry.inUse > 0 ? "busy" : "ready",
  calls: entry.calls,
  startedAt: entry.worker.startedAt
})

export const make = (
  ctx: PoolContext,
  factory: WorkerFactory["Type"],
  idPrefix: string,
  /** Host tools for the workers (and, for gRPC ones, where the host's tool bridge is). */
  host: Pick<Worker.WorkerOptions, "hostTools" | "hostBridge"> = {}
): Effect.Effect<Supervisor, never, Scope.Scope> =>
  Effect.gen(function* () {
    const { name, options, state, metric, publish, emit } = ctx
    const slots: Array<Slot> = []
    const generations = new Map<number, number>()
    let nextKey = 0
    let bounds: PoolSizeBounds = { min: options.size, max: options.maxSize }
    // Created before the pool's close finalizer, so it is interrupted after it (finalizers run in reverse).
    const slotFibers = yield* FiberMap.make<number>()
    // Shared by startup and by workers added later: never more than `startupBatchSize` start at once.
    const window = yield* Effect.makeSemaphore(options.startupBatchSize)
    const scaleUpAfterMs = Duration.toMillis(options.scaleUpAfter)
    const idleTimeoutMs = Duration.toMillis(options.idleTimeout)

    const active = () => {
      let n = 0
      for (const slot of slots) if (!slot.stopped) n++
      return n
    }

    /** Gives the slot's place in the window to the next start, `startupBatchDelay` later. */
    const releaseWindow = (slot: Slot) =>
      Effect.suspend(() => {
        if (!slot.windowHeld) return Effect.void
        slot.windowHeld = false
        return ctx.runInBackground(Effect.zipRight(Effect.sleep(options.startupBatchDelay), window.release(1)))
      })

    const workerOptions: Worker.WorkerOptions = {
      adapter: options.adapter,
      ...(options.python === undefined ? {} : { python: options.python }),
      pythonPath: options.pythonPath,
      env: options.env,
      threadLimits: options.threadLimits,
      startupTimeout: options.startupTimeout,
      gracefulTimeout: options.gracefulTimeout,
      maxMessageBytes: options.maxMessageBytes,
      validateArguments: options.validateArguments,
      transport: options.transport,
      concurrency: options.capacity,
      grpcListen: options.grpc.listen,
      ...host
    }

    const healthLoop = (entry: Live): Effect.Effect<RetireReason> =>
      Effect.gen(function* () {
        let misses = 0
        while (true) {
          yield* Effect.sleep(options.healthCheck.interval)
          const health = yield* Effect.either(entry.worker.health(options.healthCheck.timeout))
          // A worker that answers but cannot start new work (every tool thread stuck) is a miss too.
          if (Either.isLeft(health) || !health.right.ok) {
            misses++
            if (misses >= options.healthCheck.maxMisses) {
              const why = Either.isLeft(health) ? health.left.message : health.right.detail
              return { _tag: "Unhealthy", detail: `${misses} health checks missed: ${why}` } as const
            }
            continue
          }
          misses = 0
          entry.rssBytes = health.right.rssBytes
          yield* Metric.set(Metric.tagged(metric.workerRss, "worker", entry.worker.id), health.right.rssBytes)
          const maxRssMb = options.recycle.maxRssMb
          if (maxRssMb !== undefined && health.right.rssBytes > maxRssMb * 1024 * 1024) {
            return { _tag: "Recycle", why: "rss" } as const
          }
        }
      })

    const register = (slot: Slot, worker: PoolWorker) =>
      Effect.gen(function* () {
        const deferreds = {
          retire: yield* Deferred.make<RetireReason>(),
          drained: yield* Deferred.make<void>(),
          gone: yield* Deferred.make<void>()
        }
        const entry = state.add(worker, yield* Clock.currentTimeMillis, deferreds)
        slot.entry = entry
        // Removed (resize) while it was starting: it leaves at once, like any graceful retirement.
        if (slot.stopped) state.retire(entry, { _tag: "ScaleDown", why: "resize" })
        yield* Deferred.succeed(slot.firstOutcome, undefined)
        if (slot.replacement) {
          yield* Deferred.succeed(slot.replacement, entry)
          slot.replacement = undefined
        }
        yield* releaseWindow(slot)
        yield* publish
        yield* emit({ _tag: "Ready", workerId: worker.id, pid: worker.pid })
        if (slot.previous !== undefined) {
          yield* emit({ _tag: "Restarted", workerId: worker.id, pid: worker.pid, replaces: slot.previous })
        }
        slot.previous = worker.id
        return entry
      })

    /** One generation of a slot: start a worker, serve until it must leave, drain it if graceful. */
    const serveOnce = (slot: Slot) =>
      Effect.gen(function* () {
        // Generations continue across the slots that held an index: a worker id is never reused.
        slot.generation = (generations.get(slot.index) ?? 0) + 1
        generations.set(slot.index, slot.generation)
        const id = `${idPrefix}-${slot.index + 1}.${slot.generation}`
        yield* emit({ _tag: "Started", workerId: id })
        const started = yield* Effect.either(factory.spawn({ ...workerOptions, id }))
        if (Either.isLeft(started)) {
          const error = started.left
          if (error._tag === "ConfigError") return yield* Effect.die(error) // options were validated up front
          yield* Effect.logWarning(`worker ${id} failed to start: ${error.message}`)
          yield* Deferred.fail(slot.firstOutcome, error)
          if (slot.replacement) {
            yield* Deferred.fail(slot.replacement, error)
            slot.replacement = undefined
          }
          yield* releaseWindow(slot)
          yield* emit({ _tag: "StartFailed", workerId: id, reason: error.reason, detail: error.detail })
          return { _tag: "StartFailed" } as const
        }
        const entry = yield* register(slot, started.right)
        const ttl = options.recycle.ttl
        const reason = yield* Effect.raceAll([
          Effect.map(entry.worker.exited, (status): RetireReason => ({ _tag: "Crashed", ...status })),
          // The channel broke (the process is about to be killed): stop handing the worker out now.
          Effect.map(entry.worker.failed, (detail): RetireReason => ({ _tag: "Unhealthy", detail })),
          Deferred.await(entry.retire),
          healthLoop(entry),
          ttl === undefined ? Effect.never : Effect.as(Effect.sleep(ttl), { _tag: "Recycle", why: "ttl" } as const)
        ])
        yield* Effect.sync(() => state.retire(entry, reason))
        yield* publish
        yield* emitRetired(entry, reason)
        if (isGraceful(reason)) {
          // Graceful: let the calls in flight finish, unless the process dies meanwhile.
          yield* Effect.raceFirst(
            Deferred.await(entry.drained).pipe(Effect.timeout(options.drainTimeout), Effect.option),
            entry.worker.exited
          )
        }
        yield* Effect.logInfo(`worker ${id} ${describeReason(reason)}`)
        return reason
      })

    const emitRetired = (entry: Live, reason: RetireReason) => {
      const { id: workerId, pid } = entry.worker
      switch (reason._tag) {
        case "Crashed":
          return emit({ _tag: "Crashed", workerId, pid, exitCode: reason.code, signal: reason.signal })
        case "Unhealthy":
          return emit({ _tag: "Unhealthy", workerId, pid, detail: reason.detail })
        case "Recycle":
          return emit({ _tag: "Recycled", workerId, pid, reason: reason.why })
        case "Stop":
          return emit({ _tag: "Stopped", workerId, pid })
        case "ScaleDown":
          return emit({ _tag: "Retired", workerId, pid, reason: reason.why })
        case "Restart":
          return Effect.void // `Restarted` follows, once the replacement is ready
      }
    }

    /** Removes the slot's worker once its scope is closed, i.e. once its process is gone. */
    const forget = (slot: Slot) =>
      Effect.suspend(() => {
        const entry = slot.entry
        if (entry === undefined) return Effect.void
        state.remove(entry)
        slot.entry = undefined
        return Effect.zipRight(Deferred.succeed(entry.gone, undefined), publish)
      })

    /** `baseDelay` doubled `n - 1` times, jittered by ±20%, at most `maxDelay`. */
    const backoff = (n: number) =>
      Effect.map(Random.nextRange(0.8, 1.2), (jitter) =>
        Duration.min(
          Duration.times(options.restart.baseDelay, 2 ** Math.min(Math.max(n - 1, 0), 30) * jitter),
          options.restart.maxDelay
        )
      )

    const runSlot = (slot: Slot) =>
      Effect.gen(function* () {
        if (slot.needsWindow) {
          // Marked held in the same uninterruptible step as the take: an interruption never loses a place.
          yield* Effect.uninterruptibleMask((restore) =>
            Effect.zipRight(
              restore(window.take(1)),
              Effect.sync(() => {
                slot.windowHeld = true
              })
            )
          )
        }
        // Two kinds of trouble, told apart: workers that start and then die (a crash storm: restarts
        // slow down, but a slot that can start a worker never stops trying), and a slot that cannot
        // start one at all (a broken environment: past `maxRestarts` in a row it cools down).
        let crashes: Array<number> = []
        let startFailures = 0
        while (!slot.stopped) {
          // `gone` completes however the generation ends, interruption by pool close included.
          const outcome = yield* Effect.scoped(serveOnce(slot)).pipe(Effect.ensuring(forget(slot)))
          if (slot.stopped || state.closed) return
          state.counters.restarts++
          yield* Metric.increment(Metric.tagged(metric.restarts, "cause", outcome._tag))
          if (outcome._tag === "Crashed" || outcome._tag === "Unhealthy") {
            const cause =
              outcome._tag === "Unhealthy" ? "unhealthy" : (outcome.signal ?? `exit_${String(outcome.code)}`)
            yield* Metric.increment(Metric.tagged(metric.crashes, "cause", cause))
          }
          if (outcome._tag === "Recycle" || outcome._tag === "Restart") {
            startFailures = 0
            continue
          }
          if (outcome._tag === "StartFailed") {
            startFailures++
            if (startFailures > options.restart.maxRestarts) {
              yield* Effect.logError(
                `pool ${name} slot ${slot.index + 1}: ${startFailures} starts failed in a row; ` +
                  `cooling down for ${Duration.format(options.restart.cooldown)}`
              )
              yield* Effect.sleep(options.restart.cooldown)
              startFailures = 0
              continue
            }
            yield* Effect.sleep(yield* backoff(startFailures))
            continue
          }
          startFailures = 0
          const now = yield* Clock.currentTimeMillis
          crashes = [...crashes.filter((t) => now - t < Duration.toMillis(options.restart.window)), now]
          const delay = yield* backoff(crashes.length)
          if (crashes.length === options.restart.maxRestarts + 1) {
            yield* Effect.logWarning(
              `pool ${name} slot ${slot.index + 1}: ${crashes.length} crashes within ` +
                `${Duration.format(options.restart.window)}; restarts slow down (up to ${Duration.format(options.restart.maxDelay)} apart)`
            )
          }
          yield* Effect.sleep(delay)
        }
      }).pipe(
        Effect.ensuring(
          Effect.suspend(() => {
            const index = slots.indexOf(slot)
            if (index >= 0) slots.splice(index, 1)
            // Removed before its first start ended: whoever waits for that outcome stops waiting.
            Deferred.unsafeDone(slot.firstOutcome, Exit.interrupt(FiberId.none))
            // Interrupted before its first start ended: its place in the window goes back now.
            if (!slot.windowHeld) return Effect.void
            slot.windowHeld = false
            return window.release(1)
          })
        ),
        Effect.annotateLogs({ pool: name, slot: slot.index + 1 })
      )

    /** A new slot at the lowest free index; `needsWindow`: it takes a place in the window itself. */
    const newSlot = (needsWindow: boolean) =>
      Effect.gen(function* () {
        let index = 0
        while (slots.some((slot) => slot.index === index)) index++
        const slot: Slot = {
          key: nextKey++,
          index,
          generation: 0,
          entry: undefined,
          stopped: false,
          needsWindow,
          windowHeld: false,
          previous: undefined,
          firstOutcome: yield* Deferred.make<void, WorkerStartError>(),
          replacement: undefined
        }
        slots.push(slot)
        yield* FiberMap.run(slotFibers, slot.key, runSlot(slot))
        return slot
      })

    /** Takes a slot out of the pool: its worker retires gracefully, or its start is interrupted. */
    const removeSlot = (slot: Slot, why: "idle" | "resize") =>
      Effect.suspend(() => {
        slot.stopped = true
        if (slot.entry !== undefined) {
          state.retire(slot.entry, { _tag: "ScaleDown", why })
          return publish
        }
        // Starting or backing off: nothing to drain. Interrupting closes its scope (and kills a half-started worker).
        return ctx.runInBackground(FiberMap.remove(slotFibers, slot.key))
      })

    const addSlots = (n: number) => (n <= 0 ? Effect.void : Effect.repeatN(newSlot(true), n - 1).pipe(Effect.asVoid))

    /** One pass of the elastic scaler at `now`; the clock time of the next pass it needs, if any. */
    const scaleOnce = (now: number) =>
      Effect.gen(function* () {
        if (state.closed) return undefined
        let next: number | undefined
        const earliest = (at: number) => {
          next = next === undefined ? at : Math.min(next, at)
        }
        if (!state.draining && active() < bounds.max) {
          const cutoff = now - scaleUpAfterMs
          const longWaiting = state.waitingSince(cutoff)
          const pending = state.firstWaitAfter(cutoff)
          if (pending !== undefined) earliest(pending + scaleUpAfterMs)
          const starting = slots.filter((slot) => !slot.stopped && slot.entry === undefined).length
          yield* addSlots(Math.min(bounds.max - active(), longWaiting - starting))
        }
        if (active() > bounds.min && Number.isFinite(idleTimeoutMs)) {
          let surplus = active() - bounds.min
          for (const entry of state.idleWorkers()) {
            if (surplus === 0) break
            const expires = entry.idleSince + idleTimeoutMs
            if (expires > now) {
              earliest(expires)
              break
            }
            const slot = slotOf(entry)
            if (slot === undefined) continue
            yield* removeSlot(slot, "idle")
            surplus--
          }
          // Busy or session-bound workers may turn idle: look again within one idle timeout.
          if (surplus > 0) earliest(now + idleTimeoutMs)
        }
        return next
      })

    const scaler: Effect.Effect<never> = Effect.forever(
      Effect.gen(function* () {
        const woken = ctx.scalerWoken()
        const now = yield* Clock.currentTimeMillis
        const next = yield* scaleOnce(now)
        yield* next === undefined
          ? Deferred.await(woken)
          : Effect.raceFirst(Deferred.await(woken), Effect.sleep(Duration.millis(Math.max(0, next - now))))
      })
    )

    const resize = (wanted: PoolSizeBounds) =>
      Effect.gen(function* () {
        const previous = bounds
        bounds = wanted
        yield* addSlots(wanted.min - active())
        let surplus = active() - wanted.max
        // Slots without a worker first (starting or backing off), then idle, session, busy workers.
        for (const slot of slots.filter((s) => !s.stopped && s.entry === undefined)) {
          if (surplus <= 0) break
          yield* removeSlot(slot, "resize")
          surplus--
        }
        for (const entry of state.shrinkOrder()) {
          if (surplus <= 0) break
          const slot = slotOf(entry)
          if (slot === undefined || slot.stopped) continue
          yield* removeSlot(slot, "resize")
          surplus--
        }
        yield* emit({
          _tag: "Resized",
          min: wanted.min,
          max: wanted.max,
          previousMin: previous.min,
          previousMax: previous.max
        })
        ctx.wakeScaler()
      })

    // A rolling window: at most `startupBatchSize` workers start at once, and a place in it is
    // given to the next worker `startupBatchDelay` after its worker is ready or failed, so the
    // machine never idles waiting for the slowest worker of a batch.
    const start = Effect.gen(function* () {
      const failures: Array<WorkerStartError> = []
      const tooManyFailures = () => failures.length > options.size - options.minReady
      const initial: Array<Slot> = []
      for (let index = 0; index < options.size && !tooManyFailures(); index++) {
        yield* window.take(1)
        if (tooManyFailures()) break
        const slot = yield* newSlot(false)
        initial.push(slot)
        // In the pool's lifetime, not startup's: a keeper interrupted before it ran would keep its place.
        yield* ctx.runInBackground(
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
        for (const slot of initial) {
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
    })

    const slotOf = (entry: Live) => slots.find((slot) => slot.entry === entry)

    return {
      start,
      size: active,
      bounds: () => bounds,
      resize,
      scaler,
      stop: (entry) =>
        Effect.suspend(() => {
          const slot = slotOf(entry)
          if (slot) slot.stopped = true
          state.retire(entry, { _tag: "Stop" })
          return Deferred.await(entry.gone)
        }),
      restart: (entry) =>
        Effect.gen(function* () {
          const slot = slotOf(entry)
          if (state.closed || slot === undefined) return yield* new PoolClosed({ pool: name })
          const replacement = yield* Deferred.make<Live, WorkerStartError | PoolClosed>()
          slot.replacement = replacement
          state.retire(entry, { _tag: "Restart" })
          // The old process must be gone before the restart counts as done (LESSONS #6).
          yield* Deferred.await(entry.gone)
          return toInfo(name, yield* Deferred.await(replacement))
        }),
      close: Effect.sync(() => {
        state.close()
        const closed = Exit.fail(new PoolClosed({ pool: name }))
        for (const slot of slots) if (slot.replacement) Deferred.unsafeDone(slot.replacement, closed)
      })
    } satisfies Supervisor
  })
