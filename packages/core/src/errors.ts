/**
 * Every expected failure of Snakepit, as a `Schema.TaggedError` a caller can `catchTag`.
 * Each carries what a person needs to act on it.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

const Nullable = <S extends Schema.Schema.Any>(schema: S) => Schema.NullOr(schema)

/** The tool is not offered by the worker's adapter; `available` lists the tools there are. */
export class ToolNotFound extends Schema.TaggedError<ToolNotFound>()("ToolNotFound", {
  tool: Schema.String,
  available: Schema.Array(Schema.String),
  workerId: Schema.String
}) {
  override get message() {
    return `no tool "${this.tool}" on worker ${this.workerId}; available: ${this.available.join(", ") || "(none)"}`
  }
}

/** The arguments cannot be sent (not JSON-serialisable) or do not fit the tool's signature. */
export class InvalidArguments extends Schema.TaggedError<InvalidArguments>()("InvalidArguments", {
  tool: Schema.String,
  reason: Schema.String,
  /** Where in the arguments the problem is, e.g. `args.items[2]`, when known. */
  path: Nullable(Schema.String)
}) {
  override get message() {
    return `invalid arguments for "${this.tool}"${this.path ? ` at ${this.path}` : ""}: ${this.reason}`
  }
}

/** The tool raised a Python exception. */
export class PythonError extends Schema.TaggedError<PythonError>()("PythonError", {
  tool: Schema.String,
  /** The exception class, e.g. "ValueError". */
  type: Schema.String,
  /** `str(exception)`. */
  message: Schema.String,
  /** The formatted Python traceback. */
  traceback: Schema.String,
  workerId: Schema.String
}) {}

/** The worker process died or its connection broke while serving a call. */
export class WorkerCrashed extends Schema.TaggedError<WorkerCrashed>()("WorkerCrashed", {
  workerId: Schema.String,
  pid: Schema.Number,
  /** Exit code when the process exited normally. */
  exitCode: Nullable(Schema.Number),
  /** Signal name when a signal ended the process, e.g. "SIGKILL". */
  signal: Nullable(Schema.String),
  /** The last lines the worker wrote to stderr. */
  stderrTail: Schema.String,
  /** The tool that was running, when the crash ended a call. */
  tool: Nullable(Schema.String),
  detail: Schema.String
}) {
  override get message() {
    const how =
      this.signal !== null
        ? `killed by ${this.signal}`
        : this.exitCode !== null
          ? `exited with code ${this.exitCode}`
          : "lost"
    return `worker ${this.workerId} (pid ${this.pid}) ${how}${this.tool ? ` during "${this.tool}"` : ""}: ${this.detail}`
  }
}

/** The call did not finish within its timeout; the RPC was cancelled. */
export class CallTimeout extends Schema.TaggedError<CallTimeout>()("CallTimeout", {
  tool: Schema.String,
  timeoutMs: Schema.Number,
  workerId: Nullable(Schema.String)
}) {
  override get message() {
    return `"${this.tool}" did not finish within ${this.timeoutMs} ms${this.workerId ? ` on worker ${this.workerId}` : ""}`
  }
}

/**
 * Why the channel to a worker failed while its process still runs, whatever the transport:
 *
 * - `connection_lost`: the channel closed or broke;
 * - `protocol_error`: the worker sent something that is not the protocol (the worker is replaced);
 * - `message_too_large`: a message over `maxMessageBytes` in either direction;
 * - `not_reading`: the worker stopped reading its channel (the worker is replaced);
 * - `unauthenticated`: the worker refused the host's credential (gRPC);
 * - `rpc_failed`: any other failure of the call on the wire.
 */
export const TransportErrorReason = Schema.Literal(
  "connection_lost",
  "protocol_error",
  "message_too_large",
  "not_reading",
  "unauthenticated",
  "rpc_failed"
)
/** @since 0.2.0 */
export type TransportErrorReason = typeof TransportErrorReason.Type

/** The channel to a worker failed in a way that is not (yet) a crash; `reason` says how. */
export class TransportError extends Schema.TaggedError<TransportError>()("TransportError", {
  workerId: Schema.String,
  tool: Nullable(Schema.String),
  reason: TransportErrorReason,
  detail: Schema.String
}) {
  override get message() {
    return `transport to worker ${this.workerId} failed${this.tool ? ` during "${this.tool}"` : ""} (${this.reason}): ${this.detail}`
  }
}

/** The pool's queue is at `queue.max`. */
export class QueueFull extends Schema.TaggedError<QueueFull>()("QueueFull", {
  pool: Schema.String,
  max: Schema.Number
}) {
  override get message() {
    return `pool "${this.pool}" queue is full (${this.max} waiting)`
  }
}

/** No worker became free within `queue.timeout`. */
export class QueueTimeout extends Schema.TaggedError<QueueTimeout>()("QueueTimeout", {
  pool: Schema.String,
  timeoutMs: Schema.Number
}) {
  override get message() {
    return `no worker of pool "${this.pool}" became free within ${this.timeoutMs} ms`
  }
}

/** `strict_fail_fast` affinity: the session's worker is busy. */
export class WorkerBusy extends Schema.TaggedError<WorkerBusy>()("WorkerBusy", {
  workerId: Schema.String,
  session: Schema.String
}) {
  override get message() {
    return `session "${this.session}": its worker ${this.workerId} is busy`
  }
}

/** Strict affinity: the session's worker died or was recycled. */
export class SessionWorkerUnavailable extends Schema.TaggedError<SessionWorkerUnavailable>()(
  "SessionWorkerUnavailable",
  {
    session: Schema.String,
    workerId: Schema.String,
    reason: Schema.String
  }
) {}

/** Why a worker could not start. */
export const WorkerStartReason = Schema.Literal(
  "python_not_found",
  "spawn_failed",
  "adapter_import_failed",
  "adapter_start_failed",
  "exited_before_ready",
  "startup_timeout",
  "bad_readiness_line",
  "connect_failed"
)
/** @since 0.1.0 */
export type WorkerStartReason = typeof WorkerStartReason.Type

/** A worker could not be started. */
export class WorkerStartError extends Schema.TaggedError<WorkerStartError>()("WorkerStartError", {
  workerId: Schema.String,
  reason: WorkerStartReason,
  detail: Schema.String,
  /** Interpreters tried, when none was usable. */
  tried: Schema.Array(Schema.String),
  exitCode: Nullable(Schema.Number),
  signal: Nullable(Schema.String),
  stderrTail: Schema.String,
  /** The Python traceback found on stderr, if any. */
  traceback: Nullable(Schema.String)
}) {
  override get message() {
    return `worker ${this.workerId} failed to start (${this.reason}): ${this.detail}`
  }
}

/** The pool was closed; no more calls are accepted. */
export class PoolClosed extends Schema.TaggedError<PoolClosed>()("PoolClosed", {
  pool: Schema.String
}) {
  override get message() {
    return `pool "${this.pool}" is closed`
  }
}

/** `drain` was called on the pool: it finishes the calls in flight and takes no new ones. */
export class PoolDraining extends Schema.TaggedError<PoolDraining>()("PoolDraining", {
  pool: Schema.String
}) {
  override get message() {
    return `pool "${this.pool}" is draining: it takes no new calls`
  }
}

/** An option or environment variable has a bad value. */
export class ConfigError extends Schema.TaggedError<ConfigError>()("ConfigError", {
  /** The option path or environment variable, e.g. `threadLimits.openblas` or `SNAKEPIT_SIZE`. */
  key: Schema.String,
  /** The offending value, rendered. */
  value: Schema.String,
  reason: Schema.String
}) {
  override get message() {
    return `bad config ${this.key}=${this.value}: ${this.reason}`
  }
}

/** The pool could not reach its minimum size; `causes` holds each worker's failure. */
export class PoolStartError extends Schema.TaggedError<PoolStartError>()("PoolStartError", {
  pool: Schema.String,
  detail: Schema.String,
  causes: Schema.Array(WorkerStartError)
}) {
  override get message() {
    const first = this.causes[0]
    return `pool "${this.pool}" failed to start: ${this.detail}${first ? `; first cause: ${first.message}` : ""}`
  }
}

/** A worker id or handle that names no live worker. */
export class WorkerNotFound extends Schema.TaggedError<WorkerNotFound>()("WorkerNotFound", {
  workerId: Schema.String
}) {
  override get message() {
    return `no live worker "${this.workerId}"`
  }
}

/** `opts.pool` names no pool of this layer. */
export class PoolNotFound extends Schema.TaggedError<PoolNotFound>()("PoolNotFound", {
  pool: Schema.String,
  available: Schema.Array(Schema.String)
}) {
  override get message() {
    return `no pool "${this.pool}"; pools: ${this.available.join(", ")}`
  }
}

/**
 * @snakepit/cluster: the runner serving the call could not be reached (it died, or no runner
 * took the call within the cluster's delivery timeout). The call may or may not have run there.
 */
export class RunnerUnreachable extends Schema.TaggedError<RunnerUnreachable>()("RunnerUnreachable", {
  /** The runner's address (`host:port`), when one was chosen. */
  runner: Nullable(Schema.String),
  tool: Nullable(Schema.String),
  detail: Schema.String
}) {
  override get message() {
    return `runner ${this.runner ?? "(none)"} unreachable${this.tool ? ` during "${this.tool}"` : ""}: ${this.detail}`
  }
}

/**
 * @snakepit/cluster: the runner that served the call's entity (a session, or a share of the
 * session-less calls) stopped serving it before the call finished, because its shard moved or
 * the runner shut down; the call was cancelled there.
 */
export class EntityMoved extends Schema.TaggedError<EntityMoved>()("EntityMoved", {
  /** "session" or "call". */
  entity: Schema.String,
  id: Schema.String,
  tool: Nullable(Schema.String),
  detail: Schema.String
}) {
  override get message() {
    return `${this.entity} "${this.id}" moved${this.tool ? ` during "${this.tool}"` : ""}: ${this.detail}`
  }
}

/** What a single call on a worker can fail with. */
export type WorkerCallError =
  | ToolNotFound
  | InvalidArguments
  | PythonError
  | WorkerCrashed
  | CallTimeout
  | TransportError

/** What a call through the pool can fail with. */
export type CallError =
  | WorkerCallError
  | QueueFull
  | QueueTimeout
  | WorkerBusy
  | SessionWorkerUnavailable
  | PoolClosed
  | PoolDraining
  | PoolNotFound
  | RunnerUnreachable
  | EntityMoved

/**
 * Every `CallError` as one schema, for RPCs that carry a call's failure with its `_tag` and
 * fields (the control API, the cluster).
 *
 * @since 0.1.0
 * @category schemas
 */
export const CallErrorSchema = Schema.Union(
  ToolNotFound,
  InvalidArguments,
  PythonError,
  WorkerCrashed,
  CallTimeout,
  TransportError,
  QueueFull,
  QueueTimeout,
  WorkerBusy,
  SessionWorkerUnavailable,
  PoolClosed,
  PoolDraining,
  PoolNotFound,
  RunnerUnreachable,
  EntityMoved
)
