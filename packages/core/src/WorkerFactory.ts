/**
 * The seam between the pool and its workers. The pool asks a `WorkerFactory` for `PoolWorker`s
 * and speaks to them in domain types only: tool descriptions, health, exit status and typed
 * errors, never a transport's messages or status codes. The real factory starts Python
 * (`Worker.make`, over the local channel or gRPC); the testkit's fake scripts one in memory.
 *
 * @since 0.1.0
 */
import { CommandExecutor } from "@effect/platform/CommandExecutor"
import { NodeContext } from "@effect/platform-node"
import { Context, type Duration, Effect, Layer, type Scope, type Stream } from "effect"
import type {
  CallTimeout,
  ConfigError,
  TransportError,
  WorkerCallError,
  WorkerCrashed,
  WorkerStartError
} from "./errors.js"
import type { ToolDescription } from "./Snakepit.js"
import * as Worker from "./Worker.js"

/**
 * How a worker talks to its host: `local` (a private socket pair, no listener, standard library
 * only on the Python side) or `grpc` (authenticated gRPC on loopback or a 0600 unix socket).
 *
 * @since 0.2.0
 * @category models
 */
export type Transport = "local" | "grpc"

/**
 * How the process ended.
 *
 * @since 0.1.0
 * @category models
 */
export interface ExitStatus {
  readonly code: number | null
  readonly signal: string | null
}

/**
 * Tool arguments already checked and encoded (see `Worker.encodeArgs`): JSON text, the binary
 * values it refers to, and the arguments object itself (for in-memory workers).
 *
 * @since 0.1.0
 * @category models
 */
export interface EncodedArgs {
  readonly json: string
  readonly blobs: ReadonlyArray<Uint8Array>
  /** The JSON holds tagged objects standing for binary values. */
  readonly tagged: boolean
  /** The arguments object as the caller gave it. */
  readonly value: Readonly<Record<string, unknown>>
}

/**
 * Per-call options on a worker.
 *
 * @since 0.1.0
 * @category models
 */
export interface ExecuteOptions {
  /** Session whose state the tool sees as `ctx.session`. */
  readonly session?: string
  /** Cancel the call (and fail with `CallTimeout`) after this long. */
  readonly timeout?: Duration.DurationInput
  /** Raw binary values passed beside the arguments, as `ctx.attachments`. */
  readonly attachments?: Readonly<Record<string, Uint8Array>>
  /** W3C trace context of the caller's span. */
  readonly traceparent?: string
  /** The session is served away from its home worker: the tool sees `ctx.session_moved`. */
  readonly sessionMoved?: boolean
}

/**
 * Per-stream options on a worker.
 *
 * @since 0.1.0
 * @category models
 */
export interface StreamOptions {
  readonly session?: string
  /** Longest wait for the next chunk; then the stream fails with `CallTimeout`. */
  readonly idleTimeout?: Duration.DurationInput
  readonly attachments?: Readonly<Record<string, Uint8Array>>
  /** Chunks the producer may run ahead of the consumer. Default 16. */
  readonly window?: number
  readonly traceparent?: string
  readonly sessionMoved?: boolean
}

/**
 * A call running in a worker, as its health probe reports it.
 *
 * @since 0.2.0
 * @category models
 */
export interface RunningCall {
  readonly tool: string
  /** Milliseconds since it started. */
  readonly ms: number
  /** Milliseconds since the host cancelled it, when it did. */
  readonly cancelledMs: number | undefined
}

/**
 * One health probe's answer.
 *
 * @since 0.2.0
 * @category models
 */
export interface WorkerHealth {
  /** False when the worker cannot start new work (e.g. every tool thread is stuck). */
  readonly ok: boolean
  /** Why `ok` is false. */
  readonly detail: string
  readonly pid: number
  readonly rssBytes: number
  readonly activeCalls: number
  readonly uptimeMs: number
  readonly running: ReadonlyArray<RunningCall>
}

/**
 * What the pool needs of a worker.
 *
 * @since 0.1.0
 * @category models
 */
export interface PoolWorker {
  readonly id: string
  readonly pid: number
  readonly startedAt: Date
  /** Runs `tool` with arguments encoded by `Worker.encodeArgs`. Interruption cancels it in Python. */
  readonly executeEncoded: (
    tool: string,
    args: EncodedArgs,
    options?: ExecuteOptions
  ) => Effect.Effect<unknown, WorkerCallError>
  /**
   * Runs a streaming tool: its chunks, pulled on demand so the Python producer never runs more
   * than the window ahead. Ending the stream early cancels it and closes the Python generator.
   */
  readonly executeStream: (
    tool: string,
    args: EncodedArgs,
    options?: StreamOptions
  ) => Stream.Stream<unknown, WorkerCallError>
  /** One health probe. */
  readonly health: (
    timeout?: Duration.DurationInput
  ) => Effect.Effect<WorkerHealth, WorkerCrashed | TransportError | CallTimeout>
  /** The adapter's tools with their parameters. */
  readonly describeTools: Effect.Effect<ReadonlyArray<ToolDescription>, WorkerCrashed | TransportError>
  /** Drops a session's state inside the worker; true if it existed. */
  readonly cleanupSession: (session: string) => Effect.Effect<boolean, WorkerCrashed | TransportError>
  /**
   * Completes once every call this worker was asked to cancel (timeout, interruption, a stream
   * ended early) has really stopped in Python.
   */
  readonly settled: Effect.Effect<void>
  /**
   * Completes, with why, once the worker can no longer serve although its process may still run
   * for a moment (its channel broke): the pool stops handing it out at once.
   */
  readonly failed: Effect.Effect<string>
  /** Completes when the worker's process exits. */
  readonly exited: Effect.Effect<ExitStatus>
}

/**
 * Starts workers for the pool, each in the scope it is given.
 *
 * @since 0.1.0
 * @category services
 */
export class WorkerFactory extends Context.Tag("@snakepit/core/WorkerFactory")<
  WorkerFactory,
  {
    readonly spawn: (
      options: Worker.WorkerOptions
    ) => Effect.Effect<PoolWorker, WorkerStartError | ConfigError, Scope.Scope>
  }
>() {
  /** Real Python workers, spawned as child processes of this one. */
  static readonly node: Layer.Layer<WorkerFactory> = Layer.effect(
    WorkerFactory,
    // Only the executor: capturing the whole layer context would also capture the layer's
    // Scope, and every worker would then be released with the layer instead of its own scope.
    Effect.map(CommandExecutor, (executor) => ({
      spawn: (options: Worker.WorkerOptions) => Effect.provideService(Worker.make(options), CommandExecutor, executor)
    }))
  ).pipe(Layer.provide(NodeContext.layer))
}
