/**
 * A Python worker process serving the gRPC bridge, as a `Scope` resource.
 *
 * Acquire: resolve the interpreter, spawn the process in its own process group, read the one
 * readiness line within the startup timeout, connect the client. Release (on success, failure
 * and interruption alike): ask it to stop, SIGTERM the group, wait, SIGKILL the group, await
 * exit. Interrupting a half-started worker leaves no process behind.
 *
 * @since 0.1.0
 */
import { Buffer } from "node:buffer"
import { delimiter } from "node:path"
import { Command } from "@effect/platform"
import type { CommandExecutor } from "@effect/platform/CommandExecutor"
import type { PlatformError } from "@effect/platform/Error"
import { BridgeClient, type GrpcError, type Proto } from "@snakepit/grpc"
import {
  ProcessInfo,
  Registry,
  type RegistryError,
  type WorkerNotFound as RegistryNotFound,
  RunId
} from "@snakepit/registry"
import { Deferred, Duration, Effect, Fiber, Option, Ref, Schedule, type Scope, Stream } from "effect"
import {
  CallTimeout,
  type ConfigError,
  InvalidArguments,
  PythonError,
  ToolNotFound,
  TransportError,
  type WorkerCallError,
  WorkerCrashed,
  WorkerStartError,
  type WorkerStartReason
} from "./errors.js"
import { findJsonProblem } from "./internal/json.js"
import { bridgePythonPath, pythonNotFoundDetail, resolvePython } from "./internal/python.js"
import { extractTraceback, LineTail } from "./internal/stderr.js"
import * as ThreadLimits from "./ThreadLimits.js"

/** The built-in showcase adapter. */
export const DEFAULT_ADAPTER = "snakepit_bridge.showcase:ShowcaseAdapter"

/** How to start one worker. Every field has a default. */
export interface WorkerOptions {
  /** Worker id, unique within the host. Default `worker-<n>`. */
  readonly id?: string
  /** `module` or `module:Class` of the adapter. Default: the showcase adapter. */
  readonly adapter?: string
  /** Interpreter to run. Default: `SNAKEPIT_PYTHON`, else the first of python3, /usr/bin/python3, python that imports grpc. */
  readonly python?: string
  /** Extra directories on the worker's PYTHONPATH (where your adapter lives). */
  readonly pythonPath?: ReadonlyArray<string>
  /** Extra environment for the worker. */
  readonly env?: Readonly<Record<string, string>>
  /** Thread limits for numeric libraries; a partial override merges with the defaults (all 1). */
  readonly threadLimits?: Partial<ThreadLimits.ThreadLimits>
  /** Time from spawn to a connected client. Default 30 seconds. */
  readonly startupTimeout?: Duration.DurationInput
  /** Time each shutdown step (stop request, SIGTERM) may take before the next. Default 2 seconds. */
  readonly gracefulTimeout?: Duration.DurationInput
  /** Largest gRPC message in either direction. Default 64 MiB. */
  readonly maxMessageBytes?: number
  /** Run id passed as `--snakepit-run-id`. Default: the `RunId` service, else this process's. */
  readonly runId?: string
  /** Working directory of the worker. */
  readonly cwd?: string
  /** Lines of stderr kept for error messages. Default 60. */
  readonly stderrTailLines?: number
}

/** Per-call options on a worker. */
export interface ExecuteOptions {
  /** Session whose state the tool sees as `ctx.session`. */
  readonly session?: string
  /** Cancel the call (and fail with `CallTimeout`) after this long. Measured on Effect's Clock. */
  readonly timeout?: Duration.DurationInput
  /** Raw binary values passed beside the JSON arguments, as `ctx.attachments`. */
  readonly attachments?: Readonly<Record<string, Uint8Array>>
}

/** Per-stream options on a worker. */
export interface StreamOptions {
  readonly session?: string
  /** Longest wait for the next chunk; then the stream fails with `CallTimeout`. */
  readonly idleTimeout?: Duration.DurationInput
  readonly attachments?: Readonly<Record<string, Uint8Array>>
}

/** How the process ended. */
export interface ExitStatus {
  readonly code: number | null
  readonly signal: string | null
}

/** A running worker. Valid until the scope it was made in closes. */
export interface Worker {
  readonly id: string
  readonly pid: number
  /** The bridge's `host:port`. */
  readonly address: string
  readonly adapter: string
  readonly python: string
  readonly runId: string
  readonly startedAt: Date
  /** Runs `tool` with `args` (an object of named parameters) and decodes its JSON result. */
  readonly execute: (tool: string, args?: unknown, options?: ExecuteOptions) => Effect.Effect<unknown, WorkerCallError>
  /** Like `execute`, for arguments already encoded by {@link encodeArgs}. */
  readonly executeEncoded: (
    tool: string,
    args: EncodedArgs,
    options?: ExecuteOptions
  ) => Effect.Effect<unknown, WorkerCallError>
  /**
   * Runs a streaming tool: its chunks, pulled on demand so gRPC flow control throttles the
   * Python producer. Ending the stream early cancels the RPC and closes the Python generator.
   */
  readonly executeStream: (
    tool: string,
    args: EncodedArgs,
    options?: StreamOptions
  ) => Stream.Stream<unknown, WorkerCallError>
  /** The adapter's tools with their parameters. */
  readonly describeTools: Effect.Effect<ReadonlyArray<Proto.ToolSpec>, WorkerCrashed | TransportError>
  /** One health probe. */
  readonly health: (
    timeout?: Duration.DurationInput
  ) => Effect.Effect<Proto.HealthResponse, WorkerCrashed | TransportError | CallTimeout>
  /** Drops a session's state inside the worker; true if it existed. */
  readonly cleanupSession: (session: string) => Effect.Effect<boolean, WorkerCrashed | TransportError>
  /** Completes when the process exits. */
  readonly exited: Effect.Effect<ExitStatus>
  readonly isRunning: Effect.Effect<boolean>
  /** The last lines the worker wrote to stderr. */
  readonly stderrTail: Effect.Effect<string>
}

const READY_PREFIX = "SNAKEPIT_READY "

/** The same handler for every tag of `GrpcError`, for `catchTags` (no catch-all: only these tags). */
const onEveryGrpcError = <B>(handle: (error: GrpcError) => B) => ({
  GrpcUnavailable: handle,
  GrpcDeadlineExceeded: handle,
  GrpcMessageTooLarge: handle,
  GrpcFailure: handle
})

let workerCounter = 0

const signalOf = (error: PlatformError): string | null =>
  /signal: (\w+)/.exec(String((error as { cause?: unknown }).cause ?? error.message))?.[1] ?? null

/** Sends `signal` to the whole process group led by `pid`; a group that is already gone is fine. */
const signalGroup = (pid: number, signal: NodeJS.Signals) =>
  Effect.sync(() => {
    try {
      process.kill(-pid, signal)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error
    }
  })

/** True when no live process is left in group `pgid` (zombies count as gone). */
const groupIsEmpty = (pgid: number): boolean => {
  try {
    process.kill(-pgid, 0)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ESRCH") return true
    if ((error as NodeJS.ErrnoException).code !== "EPERM") throw error
  }
  // Members remain; on Linux, tell the dying from zombies. Elsewhere `kill -0` is all there is.
  const live = ProcessInfo.liveProcessGroups()
  return live !== undefined && !live.has(pgid)
}

/**
 * Waits until every process of group `pgid` is gone. A SIGKILLed process dies when the kernel
 * next schedules it, so under load a tool's child can outlive the `kill` call by a few
 * milliseconds; the scope must not close before it is gone. Bounded: a process stuck in an
 * uninterruptible sleep is logged, not waited for.
 */
const awaitGroupEmpty = (pgid: number, timeout: Duration.Duration) =>
  Effect.sync(() => groupIsEmpty(pgid)).pipe(
    Effect.repeat({ until: (empty) => empty, schedule: Schedule.spaced(Duration.millis(5)) }),
    // Finalizers are uninterruptible; the wait must not be, or its timeout could never fire.
    Effect.interruptible,
    Effect.timeout(timeout),
    Effect.catchTag("TimeoutException", () =>
      Effect.logWarning(`process group ${pgid} still has live members ${Duration.format(timeout)} after SIGKILL`)
    )
  )

/** Tool arguments already checked and encoded as a JSON object. */
export type EncodedArgs = Buffer

/**
 * Encodes `args` (an object of named parameters) as JSON, refusing anything JSON would not
 * carry faithfully, with the path of the problem. Nothing is sent when this fails.
 */
export const encodeArgs = (tool: string, args: unknown): Effect.Effect<EncodedArgs, InvalidArguments> => {
  if (args === undefined || args === null) return Effect.succeed(Buffer.from("{}"))
  if (typeof args !== "object" || Array.isArray(args)) {
    return Effect.fail(
      new InvalidArguments({
        tool,
        path: "args",
        reason: `expected an object of named parameters, got ${Array.isArray(args) ? "an array" : typeof args}`
      })
    )
  }
  const problem = findJsonProblem(args)
  return problem
    ? Effect.fail(new InvalidArguments({ tool, path: problem.path, reason: problem.reason }))
    : Effect.succeed(Buffer.from(JSON.stringify(args)))
}

/**
 * Starts a worker in the current scope. Closing the scope stops it and every process in its
 * group.
 */
export const make = (
  options: WorkerOptions = {}
): Effect.Effect<Worker, WorkerStartError | ConfigError, Scope.Scope | CommandExecutor> =>
  Effect.gen(function* () {
    const id = options.id ?? `worker-${++workerCounter}`
    const adapter = options.adapter ?? DEFAULT_ADAPTER
    const grace = options.gracefulTimeout ?? Duration.seconds(2)
    const tail = new LineTail(options.stderrTailLines ?? 60)
    const startError = (
      reason: WorkerStartReason,
      detail: string,
      extra: Partial<ConstructorParameters<typeof WorkerStartError>[0]> = {}
    ) =>
      new WorkerStartError({
        workerId: id,
        reason,
        detail,
        tried: [],
        exitCode: null,
        signal: null,
        stderrTail: tail.text(),
        traceback: extractTraceback(tail.text()),
        ...extra
      })

    const python = yield* resolvePython(options.python).pipe(
      Effect.mapError((rejections) =>
        startError("python_not_found", pythonNotFoundDetail(rejections), { tried: rejections.map((r) => r.python) })
      )
    )
    const limits = yield* ThreadLimits.resolve(options.threadLimits)
    const runId = options.runId ?? (yield* RunId.current)
    const maxMessageBytes = options.maxMessageBytes ?? BridgeClient.DEFAULT_MAX_MESSAGE_BYTES
    const pythonPath = [bridgePythonPath(), ...(options.pythonPath ?? []), process.env.PYTHONPATH]
      .filter((dir): dir is string => Boolean(dir))
      .join(delimiter)

    let command = Command.make(
      python,
      "-m",
      "snakepit_bridge.server",
      "--adapter",
      adapter,
      "--port",
      "0",
      "--worker-id",
      id,
      "--snakepit-run-id",
      runId,
      "--max-message-bytes",
      String(maxMessageBytes)
    ).pipe(
      Command.env({
        ...ThreadLimits.toEnv(limits),
        PYTHONPATH: pythonPath,
        PYTHONUNBUFFERED: "1",
        PYTHONDONTWRITEBYTECODE: "1",
        ...options.env
      }),
      // The worker watches its stdin: EOF means the host is gone.
      Command.stdin("pipe")
    )
    if (options.cwd) command = Command.workingDirectory(command, options.cwd)

    // The registry row exists before the process does, and goes only after the process is
    // confirmed gone: this finalizer is registered first, so it runs after the kill below.
    const registry = yield* Effect.serviceOption(Registry)
    const recordInRegistry = <A>(
      operation: (r: Registry["Type"]) => Effect.Effect<A, RegistryError | RegistryNotFound>
    ) =>
      Option.match(registry, {
        onNone: () => Effect.void,
        onSome: (r) =>
          operation(r).pipe(
            Effect.asVoid,
            Effect.catchTags({
              RegistryError: (e) => Effect.logWarning(`registry: ${e.message}`),
              WorkerNotFound: (e) => Effect.logWarning(`registry: ${e.message}`)
            })
          )
      })
    if (Option.isSome(registry)) {
      yield* registry.value
        .reserveWorker({ workerId: id, runId })
        .pipe(
          Effect.mapError((e) =>
            startError("spawn_failed", `could not record the worker in the registry: ${e.message}`)
          )
        )
      yield* Effect.addFinalizer(() => recordInRegistry((r) => r.removeWorker({ workerId: id, runId })))
    }

    // Spawned detached by the executor: the worker leads its own process group.
    const proc = yield* Command.start(command).pipe(Effect.mapError((e) => startError("spawn_failed", e.message)))
    const pid = proc.pid as number
    yield* recordInRegistry((r) => r.attachProcess({ workerId: id, runId, pid, pgid: pid }))
    const isRunning = Effect.orDie(proc.isRunning)

    const exited: Effect.Effect<ExitStatus> = proc.exitCode.pipe(
      Effect.map((code): ExitStatus => ({ code, signal: null })),
      Effect.catchTags({
        SystemError: (e) => Effect.succeed<ExitStatus>({ code: null, signal: signalOf(e) }),
        BadArgument: (e) => Effect.succeed<ExitStatus>({ code: null, signal: signalOf(e) })
      })
    )
    // Finalizers run uninterruptibly; the wait must be interruptible or its timeout could never fire.
    const stopRequested = yield* Ref.make(false)
    const isExited = exited.pipe(Effect.interruptible, Effect.timeout(grace), Effect.option, Effect.map(Option.isSome))

    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        if (!(yield* isRunning)) return
        // A worker asked to stop gets its grace period before any signal.
        if ((yield* Ref.get(stopRequested)) && (yield* isExited)) return
        yield* signalGroup(pid, "SIGTERM")
        if (yield* isExited) return
        yield* signalGroup(pid, "SIGKILL")
        yield* exited
      }).pipe(
        // Grandchildren outlive their parent unless the group is swept after it, and awaited.
        Effect.ensuring(Effect.zipRight(signalGroup(pid, "SIGKILL"), awaitGroupEmpty(pid, Duration.decode(grace)))),
        Effect.annotateLogs({ worker: id, pid })
      )
    )

    const stderrFiber = yield* proc.stderr.pipe(
      Stream.decodeText(),
      Stream.splitLines,
      Stream.runForEach((line) =>
        Effect.zipRight(
          Effect.sync(() => tail.push(line)),
          Effect.logDebug(line).pipe(Effect.annotateLogs({ worker: id }))
        )
      ),
      Effect.orDie,
      Effect.forkScoped
    )
    // Lets the tail catch up with what the process wrote before it exited.
    const drainedTail = Fiber.await(stderrFiber).pipe(
      Effect.timeout(Duration.seconds(1)),
      Effect.option,
      Effect.zipRight(Effect.sync(() => tail.text()))
    )

    const readyLine = yield* Deferred.make<string>()
    yield* proc.stdout.pipe(
      Stream.decodeText(),
      Stream.splitLines,
      Stream.runForEach((line) =>
        Deferred.succeed(readyLine, line).pipe(
          Effect.flatMap((first) =>
            first
              ? Effect.void
              : Effect.logWarning(`unexpected stdout: ${line}`).pipe(Effect.annotateLogs({ worker: id }))
          )
        )
      ),
      Effect.orDie,
      Effect.forkScoped
    )

    const exitedBeforeReady = (status: ExitStatus) =>
      Effect.flatMap(drainedTail, (stderrTail) => {
        const reason: WorkerStartReason =
          status.code === 3
            ? "adapter_import_failed"
            : status.code === 4
              ? "adapter_start_failed"
              : "exited_before_ready"
        const how = status.signal ? `killed by ${status.signal}` : `exited with code ${status.code}`
        const detail =
          reason === "adapter_import_failed"
            ? `adapter "${adapter}" could not be imported (${how})`
            : reason === "adapter_start_failed"
              ? `adapter "${adapter}" raised while starting (${how})`
              : `the process ${how} before its readiness line`
        return Effect.fail(
          startError(reason, detail, {
            exitCode: status.code,
            signal: status.signal,
            stderrTail,
            traceback: extractTraceback(stderrTail)
          })
        )
      })

    const startupTimeout = options.startupTimeout ?? Duration.seconds(30)
    const client = yield* Effect.gen(function* () {
      const line = yield* Effect.raceFirst(Deferred.await(readyLine), Effect.flatMap(exited, exitedBeforeReady))
      if (!line.startsWith(READY_PREFIX)) {
        return yield* startError(
          "bad_readiness_line",
          `expected "${READY_PREFIX}{...}" on stdout, got: ${line.slice(0, 200)}`
        )
      }
      const ready = yield* Effect.try({
        try: () => JSON.parse(line.slice(READY_PREFIX.length)) as { port: number },
        catch: () => startError("bad_readiness_line", `readiness line is not JSON: ${line.slice(0, 200)}`)
      })
      return yield* BridgeClient.make({
        address: `127.0.0.1:${ready.port}`,
        maxMessageBytes,
        connectTimeout: startupTimeout
      }).pipe(Effect.mapError((e) => startError("connect_failed", e.message)))
    }).pipe(
      Effect.timeoutFail({
        duration: startupTimeout,
        onTimeout: () =>
          startError("startup_timeout", `not ready within ${Duration.format(startupTimeout)}`, {
            stderrTail: tail.text()
          })
      })
    )

    yield* recordInRegistry((r) => r.activateWorker({ workerId: id, runId, pid, pgid: pid }))

    // Runs before the client closes and before the signals: a polite stop first.
    yield* Effect.addFinalizer(() =>
      isRunning.pipe(
        Effect.flatMap((running) =>
          running
            ? Ref.set(stopRequested, true).pipe(
                Effect.zipRight(client.stop(grace, { deadline: grace })),
                Effect.interruptible,
                Effect.timeout(grace),
                Effect.tapError((e) => Effect.logDebug(`stop request not answered: ${e.message}`)),
                Effect.either
              )
            : Effect.void
        )
      )
    )

    /** Turns a transport failure into a crash when the process is gone or the link is lost. */
    const transportFailure =
      (tool: string | null) =>
      (error: GrpcError): Effect.Effect<never, WorkerCrashed | TransportError> =>
        Effect.gen(function* () {
          const status = yield* exited.pipe(
            Effect.timeout(error._tag === "GrpcUnavailable" ? Duration.seconds(2) : Duration.millis(50)),
            Effect.option
          )
          if (Option.isNone(status) && error._tag !== "GrpcUnavailable") {
            return yield* new TransportError({ workerId: id, tool, grpcCode: error._tag, details: error.details })
          }
          const stderrTail = yield* drainedTail
          return yield* new WorkerCrashed({
            workerId: id,
            pid,
            exitCode: Option.isSome(status) ? status.value.code : null,
            signal: Option.isSome(status) ? status.value.signal : null,
            stderrTail,
            tool,
            detail: Option.isSome(status)
              ? error.details
              : `connection lost while the process still runs: ${error.details}`
          })
        })

    /** A tool call's gRPC failure: its own timeout passing is the call's timeout; the rest, the transport's. */
    const callFailure =
      (tool: string, timeout: Duration.DurationInput | undefined) =>
      (error: GrpcError): Effect.Effect<never, WorkerCrashed | TransportError | CallTimeout> =>
        error._tag === "GrpcDeadlineExceeded" && timeout !== undefined
          ? Effect.fail(new CallTimeout({ tool, timeoutMs: Duration.toMillis(timeout), workerId: id }))
          : transportFailure(tool)(error)

    const onTransport = <A>(
      tool: string | null,
      effect: Effect.Effect<A, GrpcError>
    ): Effect.Effect<A, WorkerCrashed | TransportError> =>
      effect.pipe(Effect.catchTags(onEveryGrpcError(transportFailure(tool))))

    const toolFailure = (tool: string, error: Proto.ToolError): WorkerCallError => {
      switch (error.kind) {
        case 2: // TOOL_NOT_FOUND
          return new ToolNotFound({ tool, available: error.availableTools, workerId: id })
        case 3: // INVALID_ARGUMENTS
          return new InvalidArguments({ tool, reason: error.message, path: null })
        default:
          return new PythonError({
            tool,
            type: error.type || "Error",
            message: error.message,
            traceback: error.traceback,
            workerId: id
          })
      }
    }

    const decode = (tool: string, json: Buffer): Effect.Effect<unknown> => {
      try {
        return Effect.succeed(JSON.parse(json.toString("utf8")) as unknown)
      } catch (error) {
        return Effect.dieMessage(`worker ${id} sent a result for "${tool}" that is not JSON: ${String(error)}`)
      }
    }

    const toBuffers = (attachments: Readonly<Record<string, Uint8Array>> | undefined) =>
      attachments === undefined
        ? {}
        : Object.fromEntries(
            Object.entries(attachments).map(([k, v]) => [k, Buffer.from(v.buffer, v.byteOffset, v.byteLength)])
          )

    const outcomeOf = (tool: string, response: Proto.ExecuteToolResponse): Effect.Effect<unknown, WorkerCallError> => {
      const outcome = response.outcome
      if (outcome?.$case === "resultJson") return decode(tool, outcome.value)
      if (outcome?.$case === "error") return Effect.fail(toolFailure(tool, outcome.value))
      return Effect.dieMessage(`worker ${id} answered "${tool}" with neither result nor error`)
    }

    const requestOf = (
      tool: string,
      argsJson: EncodedArgs,
      opts: { readonly session?: string; readonly attachments?: Readonly<Record<string, Uint8Array>> }
    ): Proto.ExecuteToolRequest => ({
      tool,
      argsJson,
      attachments: toBuffers(opts.attachments),
      sessionId: opts.session ?? "",
      requestId: ""
    })

    // The hot path of every call: plain combinators, no generator (see docs/adr/0004).
    const executeEncoded = (
      tool: string,
      argsJson: EncodedArgs,
      opts: ExecuteOptions = {}
    ): Effect.Effect<unknown, WorkerCallError> => {
      // One native timer that cancels the call (docs/adr/0004): Python sees a cancellation.
      const timeout = opts.timeout
      const request = requestOf(tool, argsJson, opts)
      return Effect.flatMap(
        client
          .executeTool(request, timeout === undefined ? undefined : { timeout })
          .pipe(Effect.catchTags(onEveryGrpcError(callFailure(tool, timeout)))),
        (response) => outcomeOf(tool, response)
      )
    }

    const executeStream = (
      tool: string,
      argsJson: EncodedArgs,
      opts: StreamOptions = {}
    ): Stream.Stream<unknown, WorkerCallError> => {
      const request = requestOf(tool, argsJson, opts)
      const idle = opts.idleTimeout
      return client.executeStreamingTool(request, idle === undefined ? undefined : { idleTimeout: idle }).pipe(
        Stream.catchTags(onEveryGrpcError((e: GrpcError) => Stream.fromEffect(callFailure(tool, idle)(e)))),
        Stream.mapEffect((chunk): Effect.Effect<unknown, WorkerCallError> => {
          const outcome = chunk.outcome
          if (outcome?.$case === "dataJson") return decode(tool, outcome.value)
          if (outcome?.$case === "error") return Effect.fail(toolFailure(tool, outcome.value))
          return Effect.dieMessage(`worker ${id} sent an empty chunk for "${tool}"`)
        })
      )
    }

    return {
      id,
      pid,
      address: client.address,
      adapter,
      python,
      runId,
      startedAt: new Date(),
      execute: (tool, args, opts) => Effect.flatMap(encodeArgs(tool, args), (json) => executeEncoded(tool, json, opts)),
      executeEncoded,
      executeStream,
      describeTools: onTransport(null, client.describeTools()).pipe(Effect.map((res) => res.tools)),
      health: (timeout = Duration.seconds(5)) =>
        onTransport(null, client.health()).pipe(
          Effect.timeoutFail({
            duration: timeout,
            onTimeout: () => new CallTimeout({ tool: "health", timeoutMs: Duration.toMillis(timeout), workerId: id })
          })
        ),
      cleanupSession: (session) => onTransport(null, client.cleanupSession(session)),
      exited,
      isRunning,
      stderrTail: Effect.sync(() => tail.text())
    } satisfies Worker
  }).pipe(Effect.withSpan("snakepit.worker.start"))
