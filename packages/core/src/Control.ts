/**
 * The control API of a running host, as an `@effect/rpc` `RpcGroup`: its pools and their stats,
 * workers, tools, per-tool latency, `restartWorker`, `stopWorker`, `resize`, `drain`, and a
 * stream of events. `SnakepitPool.layer` serves it on a unix socket in the data dir (mode 0600,
 * directory 0700; `control: false` turns it off; there is never a TCP listener), and records the
 * socket's path in the registry's run row. `snakepit status`, `top`, `restart`, `resize`,
 * `drain` and `events` are its clients; any Effect program can be one with {@link connect}.
 *
 * @since 0.1.0
 */
import { connect as netConnect } from "node:net"
import { join } from "node:path"
import { NodeSocket } from "@effect/platform-node"
import { Rpc, RpcClient, type RpcClientError, RpcGroup, RpcSerialization } from "@effect/rpc"
import { Duration, Effect, Layer, Schema, type Scope } from "effect"
import { CallErrorSchema, ConfigError, PoolClosed, PoolNotFound, WorkerNotFound, WorkerStartError } from "./errors.js"
import { PoolEvent, PoolReport, ToolLatency, WorkerDetail } from "./PoolReport.js"

/**
 * The host serving the API.
 *
 * @since 0.1.0
 * @category models
 */
export class HostInfo extends Schema.Class<HostInfo>("@snakepit/core/Control/HostInfo")({
  runId: Schema.String,
  pid: Schema.Number,
  /** When the control server started. */
  startedAt: Schema.Date,
  pools: Schema.Array(Schema.String),
  socket: Schema.String
}) {}

/**
 * A worker as `restartWorker` returns it.
 *
 * @since 0.1.0
 * @category models
 */
export class WorkerSummary extends Schema.Class<WorkerSummary>("@snakepit/core/Control/WorkerSummary")({
  id: Schema.String,
  pool: Schema.String,
  pid: Schema.Number,
  state: Schema.Literal("starting", "ready", "busy", "stopping"),
  calls: Schema.Number,
  startedAt: Schema.Date
}) {}

/**
 * A tool of a pool's adapter.
 *
 * @since 0.1.0
 * @category models
 */
export const ToolDescriptionSchema = Schema.Struct({
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

const PoolPayload = { pool: Schema.optional(Schema.String) }

/**
 * The control API.
 *
 * @since 0.1.0
 * @category rpc
 */
export class ControlRpcs extends RpcGroup.make(
  Rpc.make("Host", { success: HostInfo }),
  /** Every pool: bounds, stats, workers in detail, per-tool latency. */
  Rpc.make("Pools", { success: Schema.Array(PoolReport) }),
  Rpc.make("Workers", { payload: PoolPayload, success: Schema.Array(WorkerDetail), error: PoolNotFound }),
  Rpc.make("Tools", { payload: PoolPayload, success: Schema.Array(ToolDescriptionSchema), error: CallErrorSchema }),
  Rpc.make("Latency", { payload: PoolPayload, success: Schema.Array(ToolLatency), error: PoolNotFound }),
  Rpc.make("RestartWorker", {
    payload: { workerId: Schema.String },
    success: WorkerSummary,
    error: Schema.Union(WorkerNotFound, WorkerStartError, PoolClosed)
  }),
  Rpc.make("StopWorker", { payload: { workerId: Schema.String }, error: WorkerNotFound }),
  Rpc.make("Resize", {
    payload: { ...PoolPayload, min: Schema.Number, max: Schema.Number },
    success: Schema.Struct({ min: Schema.Number, max: Schema.Number }),
    error: Schema.Union(PoolNotFound, ConfigError)
  }),
  /** Completes once the pool's calls in flight ended. */
  Rpc.make("Drain", { payload: PoolPayload, error: PoolNotFound }),
  /** Every pool's events from the moment of the call on. */
  Rpc.make("Events", { success: PoolEvent, stream: true })
) {}

/**
 * A client of the control API.
 *
 * @since 0.1.0
 * @category models
 */
export type ControlClient = RpcClient.RpcClient<RpcGroup.Rpcs<typeof ControlRpcs>, RpcClientError.RpcClientError>

/**
 * Why a host's control socket cannot be used: `missing` (no such file: the host ended, or never
 * served one), `stale` (the file is there but nobody listens: the host died without cleaning up,
 * e.g. `kill -9`), `denied` (another user's socket), `timeout` (no answer in time), `error`.
 *
 * @since 0.1.0
 * @category errors
 */
export class ControlUnavailable extends Schema.TaggedError<ControlUnavailable>()("ControlUnavailable", {
  socket: Schema.String,
  reason: Schema.Literal("missing", "stale", "denied", "timeout", "error"),
  detail: Schema.String
}) {
  override get message() {
    return `${this.socket}: ${this.explanation}`
  }

  /** What went wrong and why, without the socket's path. */
  get explanation(): string {
    return `${UNAVAILABLE[this.reason]} (${this.detail})`
  }
}

const UNAVAILABLE: Record<ControlUnavailable["reason"], string> = {
  missing: "no control socket there: the host is not running",
  stale: "stale control socket: nothing listens on it, its host died without closing it (killed?)",
  denied: "the control socket refused this user: it belongs to another user",
  timeout: "the control socket did not answer in time",
  error: "the control socket cannot be used"
}

/**
 * Where the control socket of run `runId` lives: `<dataDir>/control/<runId>.sock`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const socketPath = (dataDir: string, runId: string): string => join(dataDir, "control", `${runId}.sock`)

/** Connects once and hangs up: tells a missing, stale or forbidden socket from a live one. */
const probe = (socket: string, timeout: Duration.Duration): Effect.Effect<void, ControlUnavailable> =>
  Effect.async<void, ControlUnavailable>((resume) => {
    const conn = netConnect({ path: socket })
    conn.once("connect", () => {
      conn.destroy()
      resume(Effect.void)
    })
    conn.once("error", (error: NodeJS.ErrnoException) => {
      conn.destroy()
      const reason =
        error.code === "ENOENT"
          ? "missing"
          : error.code === "ECONNREFUSED"
            ? "stale"
            : error.code === "EACCES" || error.code === "EPERM"
              ? "denied"
              : "error"
      resume(
        Effect.fail(new ControlUnavailable({ socket, reason, detail: `${error.code ?? "error"}: ${error.message}` }))
      )
    })
    return Effect.sync(() => conn.destroy())
  }).pipe(
    Effect.timeoutFail({
      duration: timeout,
      onTimeout: () =>
        new ControlUnavailable({
          socket,
          reason: "timeout",
          detail: `no connection within ${Duration.format(timeout)}`
        })
    })
  )

/**
 * A client of the host serving `socket`, valid for the scope. Fails at once with
 * {@link ControlUnavailable} when the socket is missing, stale or another user's, or does not
 * accept a connection within `timeout` (default 2 seconds); it never waits for a host to appear.
 *
 * @since 0.1.0
 * @category constructors
 */
export const connect = (
  socket: string,
  options: { readonly timeout?: Duration.DurationInput } = {}
): Effect.Effect<ControlClient, ControlUnavailable, Scope.Scope> =>
  Effect.gen(function* () {
    const timeout = Duration.decode(options.timeout ?? Duration.seconds(2))
    yield* probe(socket, timeout)
    // Built in the caller's scope: the connection lives as long as the client.
    const protocol = yield* Layer.build(
      RpcClient.layerProtocolSocket().pipe(
        Layer.provide(NodeSocket.layerNet({ path: socket })),
        Layer.provide(RpcSerialization.layerNdjson)
      )
    ).pipe(Effect.mapError((error) => new ControlUnavailable({ socket, reason: "error", detail: error.message })))
    return yield* RpcClient.make(ControlRpcs).pipe(Effect.provide(protocol))
  })
