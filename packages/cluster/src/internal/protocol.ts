/**
 * What travels between cluster members: the RPCs of the three entity types, with the core's
 * typed errors as their error schemas so a failure keeps its `_tag` and fields across the wire.
 */
import { Entity } from "@effect/cluster"
import { Rpc, RpcGroup } from "@effect/rpc"
import { CallErrorSchema, Control, PoolClosed, WorkerNotFound, WorkerStartError } from "@snakepit/core"
import { Schema } from "effect"

const callFields = {
  tool: Schema.String,
  /**
   * The arguments as the caller encoded (and checked) them exactly as a local pool would: JSON
   * text, and the binary values it refers to (`Worker.encodeArgs`).
   */
  args: Schema.String,
  blobs: Schema.Array(Schema.Uint8ArrayFromSelf),
  tagged: Schema.Boolean,
  pool: Schema.NullOr(Schema.String),
  /** The call's timeout, decided by the caller so that caller and runner agree on it. */
  timeoutMs: Schema.Number,
  attachments: Schema.NullOr(Schema.Record({ key: Schema.String, value: Schema.Uint8ArrayFromSelf })),
  /** The caller says the session moved (a router in front of the cluster); the runner may say so too. */
  sessionMoved: Schema.Boolean
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

/** The tools of a pool, asked of any runner. */
export const DescribeTools = Rpc.make("DescribeTools", {
  payload: { pool: Schema.NullOr(Schema.String) },
  success: Schema.Array(Control.ToolDescriptionSchema),
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
