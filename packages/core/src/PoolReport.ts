/**
 * What an operator sees of a running pool, as Schemas (so the control API can carry them):
 * a pool's report (bounds, stats, workers in detail, per-tool latency) and the pool's events.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/**
 * The counters and gauges of `stats()`, as a Schema.
 *
 * @since 0.1.0
 * @category schemas
 */
export const PoolStatsSchema = Schema.Struct({
  pool: Schema.String,
  size: Schema.Number,
  ready: Schema.Number,
  busy: Schema.Number,
  queued: Schema.Number,
  requests: Schema.Number,
  errors: Schema.Number,
  queueTimeouts: Schema.Number,
  restarts: Schema.Number
})

/**
 * A live worker in detail.
 *
 * @since 0.1.0
 * @category models
 */
export class WorkerDetail extends Schema.Class<WorkerDetail>("@snakepit/core/WorkerDetail")({
  id: Schema.String,
  pool: Schema.String,
  pid: Schema.Number,
  state: Schema.Literal("starting", "ready", "busy", "stopping"),
  /** Calls completed. */
  calls: Schema.Number,
  startedAt: Schema.Date,
  /** Time since it became ready, on the pool's clock. */
  ageMs: Schema.Number,
  /** Resident memory at the last health check; null before the first. */
  rssBytes: Schema.NullOr(Schema.Number),
  /** The tools it runs now (one per call in flight). */
  running: Schema.Array(Schema.String)
}) {}

/**
 * Latency of one tool over the pool's last calls of it (a bounded window).
 *
 * @since 0.1.0
 * @category models
 */
export class ToolLatency extends Schema.Class<ToolLatency>("@snakepit/core/ToolLatency")({
  tool: Schema.String,
  /** Calls of the tool since the pool started. */
  calls: Schema.Number,
  /** Of them, calls that failed. */
  errors: Schema.Number,
  /** Calls the percentiles are computed over: the last ones, at most the window's size. */
  window: Schema.Number,
  p50Ms: Schema.Number,
  p99Ms: Schema.Number,
  maxMs: Schema.Number
}) {}

/**
 * One pool as an operator sees it.
 *
 * @since 0.1.0
 * @category models
 */
export class PoolReport extends Schema.Class<PoolReport>("@snakepit/core/PoolReport")({
  pool: Schema.String,
  /** Size bounds; equal for a fixed-size pool. */
  min: Schema.Number,
  max: Schema.Number,
  /** True once `drain` was called: new calls fail with `PoolDraining`. */
  draining: Schema.Boolean,
  stats: PoolStatsSchema,
  workers: Schema.Array(WorkerDetail),
  tools: Schema.Array(ToolLatency)
}) {}

const event = <Tag extends string, Fields extends Schema.Struct.Fields>(tag: Tag, fields: Fields) =>
  Schema.TaggedStruct(tag, { pool: Schema.String, at: Schema.Date, ...fields })

/**
 * What happens in a pool, as `events` streams it:
 *
 * - `Started`: a worker is being started; `Ready`: it serves; `StartFailed`: it could not start.
 * - `Restarted`: a replacement of `replaces` is ready (after a crash, recycling, or `restartWorker`).
 * - `Crashed` (exit code or signal), `Unhealthy` (missed health checks), `Recycled` (`maxCalls`,
 *   `ttl`, `rss`), `Stopped` (`stopWorker`), `Retired` (an elastic pool shrank: `idle` or `resize`).
 * - `QueueFull`: a caller was refused; `Resized`: new bounds; `Draining` / `Drained`.
 *
 * @since 0.1.0
 * @category models
 */
export const PoolEvent = Schema.Union(
  event("Started", { workerId: Schema.String }),
  event("Ready", { workerId: Schema.String, pid: Schema.Number }),
  event("StartFailed", { workerId: Schema.String, reason: Schema.String, detail: Schema.String }),
  event("Restarted", { workerId: Schema.String, pid: Schema.Number, replaces: Schema.String }),
  event("Crashed", {
    workerId: Schema.String,
    pid: Schema.Number,
    exitCode: Schema.NullOr(Schema.Number),
    signal: Schema.NullOr(Schema.String)
  }),
  event("Unhealthy", { workerId: Schema.String, pid: Schema.Number, detail: Schema.String }),
  event("Recycled", { workerId: Schema.String, pid: Schema.Number, reason: Schema.Literal("maxCalls", "ttl", "rss") }),
  event("Stopped", { workerId: Schema.String, pid: Schema.Number }),
  event("Retired", { workerId: Schema.String, pid: Schema.Number, reason: Schema.Literal("idle", "resize") }),
  event("QueueFull", { max: Schema.Number }),
  event("Resized", { min: Schema.Number, max: Schema.Number, previousMin: Schema.Number, previousMax: Schema.Number }),
  event("Draining", { inFlight: Schema.Number }),
  event("Drained", {})
)

/**
 * @since 0.1.0
 * @category models
 */
export type PoolEvent = typeof PoolEvent.Type

/**
 * An event before the pool stamps it with its name and time.
 *
 * @since 0.1.0
 * @category models
 */
export type PoolEventInput = PoolEvent extends infer E ? (E extends PoolEvent ? Omit<E, "at" | "pool"> : never) : never
