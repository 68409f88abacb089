/**
 * A Python worker process as a `Scope` resource: the process half (spawn in its own process
 * group, registry row, stderr tail, a stop that cannot fail) plus one transport, the private
 * local channel (default) or authenticated gRPC.
 *
 * Acquire: resolve the interpreter, spawn, wait for readiness within the startup timeout. Release
 * (on success, failure and interruption alike): ask it to stop, SIGTERM the group, wait, SIGKILL
 * the group, await exit. Interrupting a half-started worker leaves no process behind.
 *
 * @since 0.1.0
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { delimiter, join } from "node:path"
import type { CommandExecutor } from "@effect/platform/CommandExecutor"
import { BridgeClient } from "@snakepit/grpc"
import { RunId } from "@snakepit/registry"
import { Config, Duration, Effect, Fiber, type Scope } from "effect"
import { type ConfigError, InvalidArguments, WorkerStartError } from "./errors.js"
import type { HostToolsService } from "./HostTool.js"
import * as Arrow from "./internal/arrow.js"
import * as Codec from "./internal/codec.js"
import * as GrpcProtocol from "./internal/grpc/GrpcProtocol.js"
import * as LocalProtocol from "./internal/local/LocalProtocol.js"
import * as WorkerProcess from "./internal/process.js"
import { bridgePythonPath, pythonNotFoundDetail, resolvePython } from "./internal/python.js"
import { DEFAULT_REQUIRED_MODULES } from "./PythonEnvironment.js"
import * as ThreadLimits from "./ThreadLimits.js"
import type { EncodedArgs, ExecuteOptions, PoolWorker, Transport } from "./WorkerFactory.js"

export type { EncodedArgs, ExecuteOptions, ExitStatus, StreamOptions, Transport } from "./WorkerFactory.js"

/**
 * The built-in showcase adapter.
 *
 * @since 0.1.0
 * @category constants
 */
export const DEFAULT_ADAPTER = "snakepit_bridge.showcase:ShowcaseAdapter"

/**
 * Default cap on one message in either direction: 64 MiB.
 *
 * @since 0.2.0
 * @category constants
 */
export const DEFAULT_MAX_MESSAGE_BYTES = BridgeClient.DEFAULT_MAX_MESSAGE_BYTES

/**
 * Starts the worker runtime with the current directory moved to the end of `sys.path`: a module
 * there (an `argparse.py`, a `json.py`) can neither shadow the standard library nor the bridge,
 * while an adapter kept there still imports.
 */
const BOOTSTRAP =
  "import sys;p=sys.path;(p and p[0] in ('','.')) and p.append(p.pop(0));" +
  "import runpy;runpy.run_module('snakepit_bridge',run_name='__main__',alter_sys=True)"

/**
 * How to start one worker. Every field has a default.
 *
 * @since 0.1.0
 * @category models
 */
export interface WorkerOptions {
  /** Worker id, unique within the host. Default `worker-<n>`. */
  readonly id?: string
  /** `module` or `module:Class` of the adapter. Default: the showcase adapter. */
  readonly adapter?: string
  /** Interpreter to run. Default: `SNAKEPIT_PYTHON`, else the first usable of python3, /usr/bin/python3, python. */
  readonly python?: string
  /** Extra directories on the worker's PYTHONPATH (where your adapter lives). */
  readonly pythonPath?: ReadonlyArray<string>
  /** Extra environment for the worker. */
  readonly env?: Readonly<Record<string, string>>
  /** Thread limits for numeric libraries; a partial override merges with the defaults (all 1). */
  readonly threadLimits?: Partial<ThreadLimits.ThreadLimits>
  /** Time from spawn to ready. Default 30 seconds. */
  readonly startupTimeout?: Duration.DurationInput
  /** Time each shutdown step (stop request, SIGTERM) may take before the next. Default 2 seconds. */
  readonly gracefulTimeout?: Duration.DurationInput
  /** Largest message in either direction. Default 64 MiB. */
  readonly maxMessageBytes?: number
  /** Check arguments against the tools' annotations before they run (`--validate-arguments`). */
  readonly validateArguments?: boolean
  /** Run id passed as `--snakepit-run-id`. Default: the `RunId` service, else this process's. */
  readonly runId?: string
  /** Working directory of the worker. */
  readonly cwd?: string
  /** Lines of stderr kept for error messages. Default 60. */
  readonly stderrTailLines?: number
  /** `local` (default): a private socket pair; `grpc`: authenticated gRPC. */
  readonly transport?: Transport
  /** Calls the worker may run at once (the pool's `capacity`). Default 1. */
  readonly concurrency?: number
  /** gRPC only: listen on a loopback port (default) or a 0600 unix socket in a 0700 directory. */
  readonly grpcListen?: "loopback" | "unix"
  /** Host tools the worker may call (local transport: over its own channel). */
  readonly hostTools?: HostToolsService
  /** gRPC only: where the host's tool bridge listens, and its secret. */
  readonly hostBridge?: { readonly address: string; readonly secret: string }
  /** How long the worker may leave the host's writes unread before it counts as stuck. Default 30 seconds. */
  readonly stallTimeout?: Duration.DurationInput
}

/**
 * A running worker. Valid until the scope it was made in closes.
 *
 * @since 0.1.0
 * @category models
 */
export interface Worker extends PoolWorker {
  /** "local" for the private channel, else the gRPC address (`127.0.0.1:<port>` or `unix:<path>`). */
  readonly address: string
  readonly transport: Transport
  readonly adapter: string
  readonly python: string
  readonly runId: string
  /** Runs `tool` with `args` (an object of named parameters) and decodes its result. */
  readonly execute: (tool: string, args?: unknown, options?: ExecuteOptions) => ReturnType<PoolWorker["executeEncoded"]>
  readonly isRunning: Effect.Effect<boolean>
  /** The last lines the worker wrote to stderr. */
  readonly stderrTail: Effect.Effect<string>
}

let workerCounter = 0

/** `SNAKEPIT_TRANSPORT` when it names a transport, else local (the pool validates it up front). */
const transportFromEnv = Config.literal(
  "local",
  "grpc"
)("SNAKEPIT_TRANSPORT").pipe(
  Config.withDefault("local" as const),
  Effect.orElseSucceed(() => "local" as const)
)

const EMPTY_ARGS: EncodedArgs = { json: "{}", blobs: [], tagged: false, value: {} }

/**
 * Encodes `args` (an object of named parameters), refusing anything that cannot cross
 * faithfully, with the path of the problem. Nothing is sent when this fails.
 *
 * @since 0.1.0
 * @category encoding
 */
export const encodeArgs = (tool: string, args: unknown): Effect.Effect<EncodedArgs, InvalidArguments> => {
  if (args === undefined || args === null) return Effect.succeed(EMPTY_ARGS)
  if (typeof args !== "object" || Array.isArray(args) || args instanceof Uint8Array) {
    return Effect.fail(
      new InvalidArguments({
        tool,
        path: "args",
        reason: `expected an object of named parameters, got ${Array.isArray(args) ? "an array" : typeof args === "object" ? "binary data" : typeof args}`
      })
    )
  }
  const encoded = Codec.encode(args, "args")
  return Codec.isProblem(encoded)
    ? Effect.fail(new InvalidArguments({ tool, path: encoded.path, reason: encoded.reason }))
    : Effect.succeed({ ...encoded, value: args as Readonly<Record<string, unknown>> })
}

/**
 * The arguments object back from what `encodeArgs` made of it (its JSON text and binary values),
 * for a process that received them from another (a cluster runner). Fails with
 * `InvalidArguments` when the text is not an object or refers to a missing binary value.
 *
 * @since 0.1.0
 * @category encoding
 */
export const decodeArgs = (
  tool: string,
  encoded: Pick<EncodedArgs, "json" | "blobs" | "tagged">
): Effect.Effect<Readonly<Record<string, unknown>>, InvalidArguments> =>
  Effect.try({
    try: () => {
      const parsed: unknown = JSON.parse(encoded.json)
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
        throw new Codec.MalformedValue("expected an object of named parameters")
      }
      return (encoded.tagged ? Codec.decodeTagged(parsed, encoded.blobs) : parsed) as Record<string, unknown>
    },
    catch: (error) =>
      new InvalidArguments({ tool, path: "args", reason: error instanceof Error ? error.message : String(error) })
  })

/** A 0700 directory for a gRPC worker's unix socket, removed with the scope. */
const socketDirectory = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "snakepit-grpc-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

/**
 * Starts a worker in the current scope. Closing the scope stops it and every process in its
 * group.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: WorkerOptions = {}
): Effect.Effect<Worker, WorkerStartError | ConfigError, Scope.Scope | CommandExecutor> =>
  Effect.gen(function* () {
    const id = options.id ?? `worker-${++workerCounter}`
    const adapter = options.adapter ?? DEFAULT_ADAPTER
    const transport = options.transport ?? (yield* transportFromEnv)
    const grace = Duration.decode(options.gracefulTimeout ?? Duration.seconds(2))
    const startupTimeout = Duration.decode(options.startupTimeout ?? Duration.seconds(30))
    const maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES
    const runId = options.runId ?? (yield* RunId.current)

    // The executable past any shim, resolved once per command; the local transport needs only
    // the standard library, gRPC also grpcio and protobuf.
    const python = yield* resolvePython(options.python, transport === "grpc" ? DEFAULT_REQUIRED_MODULES : []).pipe(
      Effect.mapError((rejections) => {
        // Out of file descriptors or processes is the host's trouble, not a missing interpreter.
        const exhausted = rejections.find((r) => r.exhausted !== undefined)?.exhausted
        return new WorkerStartError({
          workerId: id,
          reason: exhausted === undefined ? "python_not_found" : "spawn_failed",
          detail:
            exhausted === undefined
              ? pythonNotFoundDetail(rejections)
              : `could not run ${rejections[0]?.python ?? "python"}: this host is out of ${exhausted === "EMFILE" || exhausted === "ENFILE" ? "file descriptors" : "processes or memory"} (${exhausted}); raise its limits (\`ulimit -n\`, \`ulimit -u\`) or run fewer workers`,
          tried: rejections.map((r) => r.python),
          exitCode: null,
          signal: null,
          stderrTail: "",
          traceback: null
        })
      })
    )
    const limits = yield* ThreadLimits.resolve(options.threadLimits)
    const pythonPath = [bridgePythonPath(), ...(options.pythonPath ?? []), process.env.PYTHONPATH]
      .filter((dir): dir is string => Boolean(dir))
      .join(delimiter)
    const unixDir = transport === "grpc" && options.grpcListen === "unix" ? yield* socketDirectory : undefined
    const args = [
      "-c",
      BOOTSTRAP,
      "--adapter",
      adapter,
      "--transport",
      transport,
      "--worker-id",
      id,
      "--snakepit-run-id",
      runId,
      "--max-message-bytes",
      String(maxMessageBytes),
      ...(transport === "local" ? ["--concurrency", String(options.concurrency ?? 1)] : []),
      ...(transport === "local" && options.hostTools !== undefined ? ["--host-tools"] : []),
      ...(options.validateArguments === true ? ["--validate-arguments"] : []),
      ...(unixDir === undefined ? [] : ["--unix-socket", join(unixDir, "worker.sock")])
    ]

    // On nodes that cannot load it on first need, it loads while the worker starts (internal/arrow.ts).
    const arrowLoaded = yield* Effect.fork(Arrow.load)
    const proc = yield* WorkerProcess.spawn({
      workerId: id,
      runId,
      executable: python,
      args,
      env: {
        ...process.env,
        ...ThreadLimits.toEnv(limits),
        PYTHONPATH: pythonPath,
        PYTHONUNBUFFERED: "1",
        PYTHONDONTWRITEBYTECODE: "1",
        ...options.env
      },
      cwd: options.cwd,
      channels: transport === "local" ? 2 : 0,
      gracefulTimeout: grace,
      stderrTailLines: options.stderrTailLines ?? 60
    })

    const protocol =
      transport === "local"
        ? yield* LocalProtocol.make(proc, {
            workerId: id,
            adapter,
            maxMessageBytes,
            startupTimeout,
            gracefulTimeout: grace,
            stallTimeout: Duration.decode(options.stallTimeout ?? Duration.seconds(30)),
            hostTools: options.hostTools
          })
        : yield* GrpcProtocol.make(proc, GrpcProtocol.newToken(), {
            workerId: id,
            adapter,
            maxMessageBytes,
            startupTimeout,
            gracefulTimeout: grace,
            hostBridge: options.hostBridge
          })

    yield* proc.activate
    yield* Fiber.join(arrowLoaded)

    return {
      id,
      pid: proc.pid,
      address: protocol.address,
      transport,
      adapter,
      python,
      runId,
      startedAt: new Date(),
      execute: (tool, toolArgs, opts) =>
        Effect.flatMap(encodeArgs(tool, toolArgs), (encoded) => protocol.executeEncoded(tool, encoded, opts)),
      executeEncoded: protocol.executeEncoded,
      executeStream: protocol.executeStream,
      health: protocol.health,
      describeTools: protocol.describeTools,
      cleanupSession: protocol.cleanupSession,
      settled: protocol.settled,
      failed: protocol.failed,
      exited: proc.exited,
      isRunning: proc.isRunning,
      stderrTail: proc.stderrTail
    } satisfies Worker
  }).pipe(Effect.withSpan("snakepit.worker.start"))
