/**
 * What travels between cluster members: the RPCs of the three entity types, with the core's
 * typed errors as their error schemas so a failure keeps its `_tag` and fields across the wire.
 */
import { Entity } from "@effect/cluster"
import { Rpc, RpcGroup } from "@effect/rpc"
import {
  CallTimeout,
  EntityMoved,
  InvalidArguments,
  PoolClosed,
  PoolNotFound,
  PythonError,
  QueueFull,
  QueueTimeout,
  RunnerUnreachable,
  SessionWorkerUnavailable,
  ToolNotFound,
  TransportError,
  WorkerBusy,
  WorkerCrashed,
  WorkerNotFound,
  WorkerStartError
} from "@snakepit/core"
import { Schema } from "effect"

/** Every error a call can end with, as one schema. */
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
  PoolNotFound,
  RunnerUnreachable,
  EntityMoved
)

const callFields = {
  tool: Schema.String,
  /** The arguments as JSON text, encoded (and checked) by the caller exactly as a local pool would. */
  args: Schema.String,
  pool: Schema.NullOr(Schema.String),
  /** The call's timeout, decided by the caller so that caller and runner agree on it. */
  timeoutMs: Schema.Number,
  attachments: Schema.NullOr(Schema.Record({ key: Schema.String, value: Schema.Uint8ArrayFromSelf }))
}

/** One call of a tool. */
export const Execute = Rpc.make("Execute", {
  payload: callFields,
  success: Schema.Unknown,
  error: CallErrorSchema
})

/** One streaming call; chunks flow back as the consumer acknowledges them. */
export const ExecuteStream = Rpc.make("ExecuteStream", {
  payload: { ...callFields, buffer: Schema.NullOr(Schema.Number) },
  success: Schema.Unknown,
  error: CallErrorSchema,
  stream: true
})

const ToolDescriptionSchema = Schema.Struct({
  name: Schema.String,
  description: Schema.String,
  streaming: Schema.Boolean,
  parameters: Schema.Array(
    Schema.Struct({
      name: Schema.String,
      type: Schema.String,
      required: Schema.Boolean,
      default: Schema.optional(Schema.Unknown)
    })
  )
})

/** The tools of a pool, asked of any runner. */
export const DescribeTools = Rpc.make("DescribeTools", {
  payload: { pool: Schema.NullOr(Schema.String) },
  success: Schema.Array(ToolDescriptionSchema),
  error: CallErrorSchema
})

/** The calls of a session entity and of a session-less call entity. */
export class CallRpcs extends RpcGroup.make(Execute, ExecuteStream, DescribeTools) {}

/** A session: calls with `session` go to the entity keyed by it; its runner keeps it on one worker. */
export const SessionEntity = Entity.fromRpcGroup("snakepit/Session", CallRpcs)

/** Calls without a session, spread over runners by key (one key per shard). */
export const CallEntity = Entity.fromRpcGroup("snakepit/Call", CallRpcs)

export const WorkerInfoSchema = Schema.Struct({
  id: Schema.String,
  pool: Schema.String,
  pid: Schema.Number,
  state: Schema.Literal("starting", "ready", "busy", "stopping"),
  calls: Schema.Number,
  startedAt: Schema.DateFromNumber
})

const workerTarget = {
  /** The runner instance the caller means; another instance answers `WorkerNotFound`. */
  instance: Schema.String,
  workerId: Schema.String
}

/** Stop one worker of the runner that owns the key. */
export const StopWorker = Rpc.make("StopWorker", { payload: workerTarget, error: WorkerNotFound })

/** Restart one worker of the runner that owns the key. */
export const RestartWorker = Rpc.make("RestartWorker", {
  payload: workerTarget,
  success: WorkerInfoSchema,
  error: Schema.Union(WorkerNotFound, WorkerStartError, PoolClosed)
})

/** Operations on one runner's workers, sent to a key the runner publishes as its own. */
export class RunnerRpcs extends RpcGroup.make(StopWorker, RestartWorker) {}

/** A runner's own address in the cluster, for worker operations. */
export const RunnerEntity = Entity.fromRpcGroup("snakepit/Runner", RunnerRpcs)

/** The attachment that tells a Python tool, in `hint` mode, that its session moved here from another runner. */
export const SESSION_MOVED_ATTACHMENT = "snakepit.session_moved"
