/**
 * The call paths of one pool: leases (an idle worker, else the FIFO queue), session routing,
 * `execute`, `executeStream`, `describeTools`, and the loops that expire queued callers and
 * idle sessions. Every change of the state is one synchronous transition of {@link PoolState}.
 *
 * @internal
 */
import { Cause, Clock, Deferred, Duration, Effect, Either, Exit, FiberId, Metric, Scope, Stream } from "effect"
import { type CallError, QueueFull, SessionWorkerUnavailable, WorkerBusy } from "../errors.js"
import type { CallOptions, ToolDescription } from "../Snakepit.js"
import * as Worker from "../Worker.js"
import type { PoolWorker, TelemetrySink } from "../WorkerFactory.js"
import * as CallChecks from "./callOptions.js"
import type { PoolContext } from "./poolContext.js"
import type { Binding, Entry, WaitError } from "./poolState.js"
import { withCallSpan, workerCall, workerStream } from "./tracing.js"

type Lease = Entry<PoolWorker>

/** A leased worker, and whether a session call landed away from its home (hint mode). */
interface Checkout {
  readonly entry: Lease
  readonly moved: boolean
}

type CheckoutError = QueueFull | WaitError | WorkerBusy | SessionWorkerUnavailable
type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/** The call paths of one pool. */
export interface PoolCalls {
  readonly execute: (tool: string, args: unknown, options: CallOptions) => Effect.Effect<unknown, CallError>
  readonly executeStream: (tool: string, args: unknown, options: CallOptions) => Stream.Stream<unknown, CallError>
  readonly describeTools: Effect.Effect<ReadonlyArray<ToolDescription>, CallError>
  /** Fails queued callers whose `queue.timeout` passed; runs for the pool's lifetime. */
  readonly expireWaiters: Effect.Effect<never>
  /** Drops sessions idle longer than `sessions.ttl`, cleaning them up in their workers; one pass. */
  readonly expireSessions: Effect.Effect<void>
}

export const make = (ctx: PoolContext): PoolCalls => {
  const { name, options, state, metric, publish } = ctx

  // ---- leases -------------------------------------------------------------------------

  const release = (entry: Lease) =>
    Effect.clockWith((clock) => {
      state.release(entry, clock.unsafeCurrentTimeMillis())
      return publish
    })

  /** Ends a call of `tool` started at `startedNanos`: its latency is recorded and its lease returned. */
  const finish = (entry: Lease, tool: string, clock: Clock.Clock, startedNanos: bigint, failed: boolean) =>
    Effect.suspend(() => {
      const index = entry.running.indexOf(tool)
      if (index >= 0) entry.running.splice(index, 1)
      const ms = Number(clock.unsafeCurrentTimeNanos() - startedNanos) / 1e6
      ctx.latencies.record(tool, ms, failed)
      const metrics = ctx.toolMetrics(tool)
      metrics.duration(ms / 1000, failed)
      metrics.inFlight(--metrics.running)
      state.release(entry, clock.unsafeCurrentTimeMillis())
      return publish
    })

  /**
   * Ends a call that was cancelled (interrupted, timed out, a stream ended early): the lease comes
   * back only once the worker says the tool really stopped, so a worker is never handed out while
   * a tool it was told to drop still runs. Still running after `cancelGrace` (a tool blocked
   * where Python cannot interrupt it), the worker is retired. In the background: the caller
   * already has its answer.
   */
  const finishWhenSettled = (entry: Lease, tool: string, clock: Clock.Clock, startedNanos: bigint) =>
    ctx.runInBackground(
      entry.worker.settled.pipe(
        Effect.timeout(options.cancelGrace),
        Effect.catchTag("TimeoutException", () =>
          Effect.zipRight(
            Effect.logWarning(
              `worker ${entry.worker.id}: a cancelled call to "${tool}" still runs ` +
                `${Duration.format(options.cancelGrace)} later; replacing the worker`
            ),
            Effect.zipRight(
              Metric.increment(Metric.tagged(metric.stuckCalls, "tool", tool)),
              Effect.sync(() =>
                state.retire(entry, {
                  _tag: "Unhealthy",
                  detail: `a cancelled call to "${tool}" still ran after ${Duration.format(options.cancelGrace)}`
                })
              )
            )
          )
        ),
        Effect.ensuring(finish(entry, tool, clock, startedNanos, true))
      )
    )

  /** A call that ended by cancellation (interruption, timeout) may still run in Python. */
  const wasCancelled = (exit: Exit.Exit<unknown, CallError>): boolean => {
    if (Exit.isSuccess(exit)) return false
    if (Cause.isInterruptedOnly(exit.cause)) return true
    const failure = Cause.failureOption(exit.cause)
    return failure._tag === "Some" && failure.value._tag === "CallTimeout"
  }

  /** A lease (asked for at `askedNanos`) now runs `tool`: the clock reading its latency starts from. */
  const begin = (entry: Lease, tool: string, clock: Clock.Clock, askedNanos: bigint): bigint => {
    entry.running.push(tool)
    const now = clock.unsafeCurrentTimeNanos()
    // Synchronous metric updates: this runs on every call (docs/adr/0004).
    const metrics = ctx.toolMetrics(tool)
    metrics.queueWait(Number(now - askedNanos) / 1e9)
    metrics.inFlight(++metrics.running)
    return now
  }

  const dropped = { logs: metric.droppedLogs, spans: metric.droppedSpans }

  /** A caller that waits for a worker does so in a span of its own (none when one was idle). */
  const queueSpan = withCallSpan("snakepit.pool.queue", () => ({ pool: name }))

  // Queue timeouts: one fiber fails expired waiters, instead of a timeout fiber per waiter
  // (which cost more than the rest of a queued call; see bench/).
  let queueNotEmpty = Deferred.unsafeMake<void>(FiberId.none)

  const expireWaiters: Effect.Effect<never> = Effect.forever(
    Effect.suspend(() => {
      if (state.waiters.length === 0) {
        queueNotEmpty = Deferred.unsafeMake<void>(FiberId.none)
        return Deferred.await(queueNotEmpty)
      }
      return Effect.clockWith((clock) => {
        const now = clock.unsafeCurrentTimeMillis()
        const first = state.waiters[0]!.deadline
        if (first > now) return Effect.sleep(Duration.millis(first - now))
        state.expireWaiters(now)
        return Effect.void
      })
    })
  )

  /** Waits in the queue for `target` (or any worker). Safe to call uninterruptibly: the wait itself is restored. */
  const waitFor = (target: Lease | undefined, restore: Restore): Effect.Effect<Lease, QueueFull | WaitError> =>
    Effect.clockWith((clock): Effect.Effect<Lease, QueueFull | WaitError> => {
      const waiter = state.enqueue(target, clock.unsafeCurrentTimeMillis())
      if (waiter instanceof QueueFull)
        return Effect.zipRight(ctx.emit({ _tag: "QueueFull", max: waiter.max }), Effect.fail(waiter))
      if (state.waiters.length === 1) {
        Deferred.unsafeDone(queueNotEmpty, Exit.void)
        ctx.wakeScaler()
      }
      return Effect.zipRight(
        publish,
        restore(Deferred.await(waiter.deferred)).pipe(
          Effect.onExit((exit) =>
            Effect.suspend(() => {
              if (Exit.isSuccess(exit)) return Effect.void
              const handed = state.abandon(waiter)
              if (exit.cause._tag === "Fail" && exit.cause.error._tag === "QueueTimeout") {
                state.counters.queueTimeouts++
                return Effect.zipRight(Metric.increment(metric.queueTimeouts), publish)
              }
              // Handed a worker in the same instant we were interrupted: pass it on, never leak it.
              return handed ? release(handed) : publish
            })
          )
        )
      )
    })

  const takeAny = (restore: Restore) =>
    Effect.suspend(() => {
      const idle = state.takeIdle()
      return idle ? Effect.succeed(idle) : queueSpan(waitFor(undefined, restore))
    })

  const cleanupInWorker = (session: string, binding: Binding<PoolWorker>) =>
    binding.lost !== undefined || binding.entry.retiring !== undefined
      ? Effect.void
      : ctx.runInBackground(
          binding.entry.worker.cleanupSession(session).pipe(
            Effect.tapError((e) => Effect.logDebug(`session ${session} cleanup failed: ${e.message}`)),
            Effect.either
          )
        )

  const cleanupAll = (dropped: ReadonlyArray<readonly [string, Binding<PoolWorker>]>) =>
    dropped.length === 0
      ? Effect.void
      : Effect.forEach(dropped, ([session, binding]) => cleanupInWorker(session, binding), { discard: true })

  const bind = (session: string, entry: Lease) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) => cleanupAll(state.bind(session, entry, now)))

  /** `hint` served a session away from its home worker (busy, or gone): the tool is told. */
  const fallback = (entry: Lease): Effect.Effect<Checkout> =>
    Effect.as(Metric.increment(metric.sessionFallbacks), { entry, moved: true })

  const checkoutSession = (session: string, restore: Restore) =>
    Effect.gen(function* () {
      const found = state.lookupSession(session, yield* Clock.currentTimeMillis)
      if (found._tag !== "Bound") {
        // A lost binding is invalidated the moment its worker left (LESSONS #14): never routed to again.
        if (found._tag === "Lost" && options.affinity !== "hint") {
          return yield* new SessionWorkerUnavailable({ session, workerId: found.workerId, reason: found.reason })
        }
        const entry = yield* takeAny(restore)
        yield* bind(session, entry)
        // A session whose worker left starts over on its new one: in hint mode the tool learns it.
        return found._tag === "Lost" ? yield* fallback(entry) : { entry, moved: false }
      }
      const home = found.entry
      if (state.tryTake(home)) return { entry: home, moved: false }
      switch (options.affinity) {
        case "hint":
          return yield* Effect.flatMap(takeAny(restore), fallback)
        case "strict_fail_fast":
          return yield* new WorkerBusy({ workerId: home.worker.id, session })
        case "strict_queue":
          return yield* queueSpan(waitFor(home, restore)).pipe(
            Effect.map((entry): Checkout => ({ entry, moved: false })),
            Effect.mapError((e) =>
              e._tag === "SessionWorkerUnavailable" ? new SessionWorkerUnavailable({ ...e, session }) : e
            )
          )
      }
    })

  const checkout = (session: string | undefined, restore: Restore): Effect.Effect<Checkout, CheckoutError> =>
    Effect.suspend(() => {
      const refused = state.refusal()
      return refused !== undefined
        ? Effect.fail(refused)
        : session === undefined
          ? Effect.map(takeAny(restore), (entry): Checkout => ({ entry, moved: false }))
          : checkoutSession(session, restore)
    })

  // ---- calls --------------------------------------------------------------------------

  const runOn = (
    lease: Checkout,
    tool: string,
    args: Worker.EncodedArgs,
    call: CallChecks.CheckedCall,
    telemetry: TelemetrySink
  ) =>
    lease.entry.worker
      .executeEncoded(tool, args, {
        ...(call.session === undefined ? {} : { session: call.session }),
        ...(call.attachments === undefined ? {} : { attachments: call.attachments }),
        ...(call.timeout === undefined ? {} : { timeout: call.timeout }),
        ...(lease.moved || call.sessionMoved ? { sessionMoved: true } : {}),
        telemetry
      })
      .pipe(
        // The call was cancelled; a worker that does not answer a health probe now (frozen) is
        // retired at once rather than after the cancel grace.
        Effect.tapErrorTag("CallTimeout", () =>
          lease.entry.worker.health(options.healthCheck.timeout).pipe(
            Effect.either,
            Effect.flatMap((health) =>
              Either.isLeft(health)
                ? Effect.sync(() =>
                    state.retire(lease.entry, { _tag: "Unhealthy", detail: "no answer after a cancelled call" })
                  )
                : Effect.void
            )
          )
        )
      )

  /** `runOn` with the call's telemetry, in the worker call's span when traced. */
  const traced = (lease: Checkout, tool: string, args: Worker.EncodedArgs, call: CallChecks.CheckedCall) => {
    const { id: workerId, pid } = lease.entry.worker
    return workerCall({ pool: name, tool, session: call.session, workerId, pid }, dropped, (telemetry) =>
      runOn(lease, tool, args, call, telemetry)
    )
  }

  /** The `snakepit.pool.*` span's attributes, read before the options are checked. */
  const spanAttributes = (tool: string, call: CallOptions | undefined) =>
    typeof call?.session === "string" ? { pool: name, tool, session: call.session } : { pool: name, tool }

  const countError = Effect.zipRight(
    Effect.sync(() => state.counters.errors++),
    Metric.increment(metric.errors)
  )

  const countRequest = Effect.zipRight(
    Effect.sync(() => state.counters.requests++),
    Metric.increment(metric.requests)
  )

  // The hot path: plain combinators, no generator, no span under the built-in tracer (ADR 0004).
  // Everything that can fail on the caller's input (options, arguments) runs before the lease;
  // from the lease on, the worker's call is built inside the effect whose exit returns it, so
  // nothing (a defect included) can leak it.
  const execute = (tool: string, args: unknown, call: CallOptions | undefined): Effect.Effect<unknown, CallError> =>
    Effect.zipRight(
      countRequest,
      Effect.flatMap(CallChecks.check(tool, call, options.callTimeout), (checked) =>
        Effect.flatMap(Worker.encodeArgs(tool, args), (encoded) =>
          Effect.uninterruptibleMask((restore) =>
            Effect.clockWith((clock) => {
              // Queue wait is measured from here: the lease may wait for a worker.
              const asked = clock.unsafeCurrentTimeNanos()
              return Effect.flatMap(checkout(checked.session, restore), (lease) => {
                const started = begin(lease.entry, tool, clock, asked)
                return Effect.zipRight(
                  publish,
                  restore(Effect.suspend(() => traced(lease, tool, encoded, checked)))
                ).pipe(
                  Effect.onExit((exit) =>
                    wasCancelled(exit)
                      ? finishWhenSettled(lease.entry, tool, clock, started)
                      : finish(lease.entry, tool, clock, started, Exit.isFailure(exit))
                  )
                )
              })
            })
          )
        )
      )
    ).pipe(
      Effect.tapError(() => countError),
      withCallSpan("snakepit.pool.execute", () => spanAttributes(tool, call))
    )

  const executeStream = (
    tool: string,
    args: unknown,
    call: CallOptions | undefined
  ): Stream.Stream<unknown, CallError> =>
    Stream.unwrapScoped(
      Effect.gen(function* () {
        yield* countRequest
        const checked = yield* CallChecks.check(tool, call, options.callTimeout)
        const encoded = yield* Worker.encodeArgs(tool, args)
        const scope = yield* Effect.scope
        const clock = yield* Effect.clock
        // The lease is tied to the stream's scope: held while the stream runs, returned however it
        // ends; a stream ended early (or timed out) first lets its generator stop.
        let ended: "no" | "done" | "failed" = "no"
        const asked = clock.unsafeCurrentTimeNanos()
        const lease = yield* Effect.uninterruptibleMask((restore) =>
          Effect.tap(checkout(checked.session, restore), ({ entry }) => {
            const started = begin(entry, tool, clock, asked)
            return Scope.addFinalizerExit(scope, (exit) =>
              ended === "no"
                ? finishWhenSettled(entry, tool, clock, started)
                : finish(entry, tool, clock, started, ended === "failed" || Exit.isFailure(exit))
            )
          })
        )
        yield* publish
        const { id: workerId, pid } = lease.entry.worker
        const telemetry = yield* workerStream({ pool: name, tool, session: checked.session, workerId, pid }, dropped)
        return lease.entry.worker
          .executeStream(tool, encoded, {
            ...(checked.session === undefined ? {} : { session: checked.session }),
            ...(checked.attachments === undefined ? {} : { attachments: checked.attachments }),
            ...(checked.buffer === undefined ? {} : { window: checked.buffer }),
            ...(checked.timeout === undefined ? {} : { idleTimeout: checked.timeout }),
            ...(lease.moved || checked.sessionMoved ? { sessionMoved: true } : {}),
            telemetry
          })
          .pipe(
            Stream.onEnd(
              Effect.sync(() => {
                ended = "done"
              })
            ),
            // The worker ended the stream (a tool error, a crash): nothing runs on. An idle
            // timeout cancelled it instead.
            Stream.tapError((error) =>
              Effect.sync(() => {
                if (error._tag !== "CallTimeout") ended = "failed"
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
    Effect.flatMap(checkout(undefined, restore), ({ entry }) =>
      restore(entry.worker.describeTools).pipe(Effect.ensuring(release(entry)))
    )
  )

  const expireSessions = Effect.flatMap(Clock.currentTimeMillis, (now) =>
    cleanupAll(state.expireSessions(now, Duration.toMillis(options.sessions.ttl)))
  )

  return { execute, executeStream, describeTools, expireWaiters, expireSessions }
}
