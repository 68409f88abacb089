/**
 * An in-memory `WorkerFactory` for deterministic tests: scripted tools whose latency is
 * `Effect.sleep` (so `TestClock` drives it), crashes on demand, health you can break.
 * Provide `fake.layer` where `SnakepitPool.layerWithoutDependencies` needs a `WorkerFactory`.
 *
 * @since 0.1.0
 */
import {
  CallTimeout,
  InvalidArguments,
  ToolNotFound,
  TransportError,
  type Worker,
  type WorkerCallError,
  WorkerCrashed,
  WorkerFactory,
  WorkerStartError
} from "@snakepit/core"
import { Deferred, Duration, Effect, Fiber, Layer, Option, Stream } from "effect"

/** A scripted tool: gets the decoded arguments and the worker it runs on. */
export type FakeTool = (args: Record<string, unknown>, worker: FakeWorker) => Effect.Effect<unknown, WorkerCallError>

/** A scripted streaming tool: the chunks it yields, with whatever delays it sleeps between them. */
export type FakeStreamTool = (
  args: Record<string, unknown>,
  worker: FakeWorker
) => Stream.Stream<unknown, WorkerCallError>

/** One fake worker, as the test sees it. */
export interface FakeWorker {
  readonly id: string
  readonly pid: number
  /** Every call it received, in order. */
  readonly calls: Array<{
    readonly tool: string
    readonly args: Record<string, unknown>
    readonly session: string | undefined
    /** Present (true) only when the pool told the tool its session moved (`ctx.session_moved`). */
    readonly sessionMoved?: boolean
  }>
  /** Sessions the pool asked it to clean up. */
  readonly cleanedSessions: Array<string>
  /** Resident memory reported by health checks, in bytes. */
  rssBytes: number
  /** When false, health checks fail. */
  healthy: boolean
  /** Ends the "process": running and later calls fail with `WorkerCrashed`. */
  readonly crash: (status?: Worker.ExitStatus) => Effect.Effect<void>
  readonly isAlive: Effect.Effect<boolean>
}

/** How fake workers behave. */
export interface FakeWorkersOptions {
  /** Tools by name. Default: `echo` (returns `value`) and `sleep` (sleeps `ms` on the clock). */
  readonly tools?: Readonly<Record<string, FakeTool>>
  /** Streaming tools by name. Default: `stream_numbers` (`count` chunks `{ i }`, `delay_ms` apart). */
  readonly streams?: Readonly<Record<string, FakeStreamTool>>
  /**
   * Time each worker takes to start, on the Effect clock. Default 0. Longer than the pool's
   * `startupTimeout` (`Duration.infinity` for "never ready") fails the start with `startup_timeout`.
   * A function decides per start attempt (1-based), e.g. for workers that start at different speeds.
   */
  readonly startDelay?: Duration.DurationInput | ((attempt: number, workerId: string) => Duration.DurationInput)
  /** Decides, per start attempt (1-based), whether the start fails. */
  readonly failStart?: (attempt: number, workerId: string) => WorkerStartError | undefined
}

/** The default tools. */
export const defaultTools: Readonly<Record<string, FakeTool>> = {
  echo: (args) => Effect.succeed(args.value ?? null),
  sleep: (args) => Effect.as(Effect.sleep(Duration.millis(Number(args.ms ?? 0))), { slept_ms: args.ms })
}

/** One call a fake worker received. */
export interface FakeCall {
  readonly workerId: string
  readonly tool: string
  readonly args: Record<string, unknown>
  readonly session: string | undefined
  /** Present (true) only when the pool told the tool its session moved (`ctx.session_moved`). */
  readonly sessionMoved?: boolean
}

/** The default streaming tools. */
export const defaultStreams: Readonly<Record<string, FakeStreamTool>> = {
  stream_numbers: (args) =>
    Stream.range(0, Number(args.count ?? 0) - 1).pipe(
      Stream.mapEffect((i) => Effect.as(Effect.sleep(Duration.millis(Number(args.delay_ms ?? 0))), { i }))
    )
}

/** A fake factory and the workers it has started, newest last. */
export interface FakeWorkers {
  readonly layer: Layer.Layer<WorkerFactory>
  readonly started: ReadonlyArray<FakeWorker>
  /** Every call any worker received, in order. */
  readonly calls: ReadonlyArray<FakeCall>
  /** Workers not yet crashed or stopped. */
  readonly alive: Effect.Effect<ReadonlyArray<FakeWorker>>
  /** Start attempts so far, failed ones included. */
  readonly attempts: number
}

/** Creates a fake worker factory. */
export const make = (options: FakeWorkersOptions = {}): FakeWorkers => {
  const tools = options.tools ?? defaultTools
  const streams = options.streams ?? defaultStreams
  const started: Array<FakeWorker> = []
  const calls: Array<FakeCall> = []
  const exits = new Map<FakeWorker, Deferred.Deferred<Worker.ExitStatus>>()
  let attempts = 0
  let nextPid = 10_000

  const spawn = (spawnOptions: Worker.WorkerOptions) =>
    Effect.gen(function* () {
      const id = spawnOptions.id ?? `fake-${attempts + 1}`
      attempts++
      const startDelay =
        typeof options.startDelay === "function" ? options.startDelay(attempts, id) : options.startDelay
      if (startDelay !== undefined) {
        // Like a real worker: not ready within its startup timeout is a start failure.
        const timeout = Duration.decode(spawnOptions.startupTimeout ?? Duration.seconds(30))
        if (Duration.greaterThan(Duration.decode(startDelay), timeout)) {
          yield* Effect.sleep(timeout)
          return yield* Effect.fail(
            new WorkerStartError({
              workerId: id,
              reason: "startup_timeout",
              detail: `not ready within ${Duration.format(timeout)}`,
              tried: [],
              exitCode: null,
              signal: null,
              stderrTail: "",
              traceback: null
            })
          )
        }
        yield* Effect.sleep(startDelay)
      }
      const failure = options.failStart?.(attempts, id)
      if (failure) return yield* Effect.fail(failure)
      const exit = yield* Deferred.make<Worker.ExitStatus>()
      const fake: FakeWorker = {
        id,
        pid: nextPid++,
        calls: [],
        cleanedSessions: [],
        rssBytes: 50 * 1024 * 1024,
        healthy: true,
        crash: (status = { code: null, signal: "SIGKILL" }) => Effect.asVoid(Deferred.succeed(exit, status)),
        isAlive: Effect.map(Deferred.isDone(exit), (done) => !done)
      }
      started.push(fake)
      exits.set(fake, exit)
      // The scope owns the "process": closing it ends the worker like a stop would.
      yield* Effect.addFinalizer(() => Deferred.succeed(exit, { code: 0, signal: null }))

      const crashed = (tool: string | null) =>
        Effect.flatMap(Deferred.await(exit), (status) =>
          Effect.fail(
            new WorkerCrashed({
              workerId: id,
              pid: fake.pid,
              exitCode: status.code,
              signal: status.signal,
              stderrTail: "",
              tool,
              detail: "fake worker crashed"
            })
          )
        )

      // Calls the caller gave up on (timeout, interruption) that still run, as in Python: a tool
      // made with `tool.stubborn` runs on after its cancel, and `settled` waits for it.
      const abandoned = new Set<Fiber.RuntimeFiber<unknown, WorkerCallError>>()
      const workerScope = yield* Effect.scope

      const executeEncoded: Worker.Worker["executeEncoded"] = (tool, argsJson, callOptions = {}) =>
        Effect.gen(function* () {
          if (yield* Deferred.isDone(exit)) return yield* crashed(tool)
          const args = argsJson.value as Record<string, unknown>
          const call = {
            tool,
            args,
            session: callOptions.session,
            ...(callOptions.sessionMoved === true ? { sessionMoved: true } : {})
          }
          fake.calls.push(call)
          calls.push({ workerId: id, ...call })
          const handler = tools[tool]
          if (!handler) return yield* new ToolNotFound({ tool, available: Object.keys(tools).sort(), workerId: id })
          // The tool runs in the worker, not in the caller: a cancel asks it to stop, and the
          // caller does not wait for that. A daemon, like a Python thread: the worker's scope
          // closing does not wait for a tool that ignores cancellation.
          const running = yield* Effect.forkDaemon(Effect.raceFirst(handler(args, fake), crashed(tool)))
          const abandon = Effect.sync(() => {
            abandoned.add(running)
          }).pipe(
            Effect.zipRight(Fiber.interruptFork(running)),
            Effect.zipRight(
              Effect.forkIn(
                Effect.ensuring(
                  Fiber.await(running),
                  Effect.sync(() => abandoned.delete(running))
                ),
                workerScope
              )
            )
          )
          const timeout = callOptions.timeout
          const joined = Fiber.join(running)
          return yield* (
            timeout === undefined
              ? joined
              : joined.pipe(
                  Effect.timeoutFail({
                    duration: timeout,
                    onTimeout: () => new CallTimeout({ tool, timeoutMs: Duration.toMillis(timeout), workerId: id })
                  })
                )
          ).pipe(
            Effect.tapErrorTag("CallTimeout", () => abandon),
            Effect.onInterrupt(() => abandon)
          )
        })

      const executeStream: Worker.Worker["executeStream"] = (tool, argsJson, streamOptions = {}) =>
        Stream.unwrap(
          Effect.map(Deferred.isDone(exit), (done): Stream.Stream<unknown, WorkerCallError> => {
            if (done) return Stream.fromEffect(crashed(tool))
            const args = argsJson.value as Record<string, unknown>
            fake.calls.push({ tool, args, session: streamOptions.session })
            calls.push({ workerId: id, tool, args, session: streamOptions.session })
            const handler = streams[tool]
            if (!handler) {
              const available = [...Object.keys(tools), ...Object.keys(streams)].sort()
              return Stream.fail(new ToolNotFound({ tool, available, workerId: id }))
            }
            // A crash ends the stream with WorkerCrashed after the chunks already sent.
            const chunks = Stream.interruptWhen(handler(args, fake), crashed(tool))
            const idle = streamOptions.idleTimeout
            return idle === undefined
              ? chunks
              : Stream.timeoutFail(
                  chunks,
                  () => new CallTimeout({ tool, timeoutMs: Duration.toMillis(idle), workerId: id }),
                  idle
                )
          })
        )

      const health: Worker.Worker["health"] = (timeout = Duration.seconds(5)) =>
        Effect.gen(function* () {
          if (yield* Deferred.isDone(exit)) return yield* crashed(null)
          if (!fake.healthy) {
            // An unresponsive worker: the probe hangs until its timeout.
            return yield* Effect.never.pipe(
              Effect.timeoutFail({
                duration: timeout,
                onTimeout: () =>
                  new CallTimeout({ tool: "health", timeoutMs: Duration.toMillis(timeout), workerId: id })
              })
            )
          }
          return {
            ok: true,
            detail: "",
            pid: fake.pid,
            rssBytes: fake.rssBytes,
            activeCalls: 0,
            uptimeMs: 0,
            running: []
          }
        })

      return {
        id,
        pid: fake.pid,
        startedAt: new Date(0),
        executeEncoded,
        executeStream,
        health,
        // The scripted tools, described as a Python adapter would describe them.
        describeTools: Effect.succeed([
          ...Object.keys(tools).map((name) => ({ name, description: "", parameters: [], streaming: false })),
          ...Object.keys(streams).map((name) => ({ name, description: "", parameters: [], streaming: true }))
        ]),
        cleanupSession: (session: string) =>
          Effect.gen(function* () {
            if (yield* Deferred.isDone(exit)) {
              return yield* new TransportError({
                workerId: id,
                tool: null,
                reason: "connection_lost",
                detail: "the fake worker is gone"
              })
            }
            fake.cleanedSessions.push(session)
            return true
          }),
        settled: Effect.suspend(() => Effect.forEach([...abandoned], Fiber.await, { discard: true })),
        failed: Effect.never,
        exited: Deferred.await(exit)
      }
    })

  return {
    layer: Layer.succeed(WorkerFactory, WorkerFactory.of({ spawn })),
    started,
    calls,
    alive: Effect.filter(started, (w) => w.isAlive),
    get attempts() {
      return attempts
    }
  }
}

/** Building blocks for scripted tools. */
export const tool = {
  /** Answers `value`. */
  succeed:
    (value: unknown): FakeTool =>
    () =>
      Effect.succeed(value),
  /** Answers `value` after `latency` on the Effect clock. */
  delay:
    (latency: Duration.DurationInput, value: unknown): FakeTool =>
    () =>
      Effect.as(Effect.sleep(latency), value),
  /**
   * Sleeps `latency` on the clock and ignores cancellation, like a Python tool blocked in native
   * code: a caller's timeout returns at once, but the worker stays busy until the tool ends.
   */
  stubborn:
    (latency: Duration.DurationInput, value: unknown = null): FakeTool =>
    () =>
      Effect.uninterruptible(Effect.as(Effect.sleep(latency), value)),
  /** Fails with `error` (a `PythonError`, `InvalidArguments`, ...). */
  fail:
    (error: WorkerCallError): FakeTool =>
    () =>
      Effect.fail(error),
  /** Crashes the worker running it after `after` (default: at once); the call gets `WorkerCrashed`. */
  crash:
    (after: Duration.DurationInput = Duration.zero, status?: Worker.ExitStatus): FakeTool =>
    (_, worker) =>
      Effect.zipRight(Effect.sleep(after), Effect.zipRight(worker.crash(status), Effect.never))
}

/** Fails a fake call with `InvalidArguments`, as a Python signature mismatch would. */
export const invalidArguments = (tool: string, reason: string) =>
  Effect.fail(new InvalidArguments({ tool, reason, path: null }))

/** The last started worker, if any. */
export const latest = (fake: FakeWorkers): Option.Option<FakeWorker> => Option.fromNullable(fake.started.at(-1))
