/**
 * The `Snakepit` service: run Python tools on a pool of workers.
 *
 * @since 0.1.0
 */
import { Context, type Duration, type Effect, type Stream } from "effect"
import type { CallError, ConfigError, PoolClosed, PoolNotFound, WorkerNotFound, WorkerStartError } from "./errors.js"
import type { PoolSize } from "./PoolOptions.js"
import type { PoolEvent, PoolReport } from "./PoolReport.js"
import type { ToolTypes } from "./Tool.js"

/** Per-call options. */
export interface CallOptions {
  /** Route to this session's worker (see the pool's `affinity`), and give the tool its state. */
  readonly session?: string
  /** Which named pool serves the call. Default: the first pool. */
  readonly pool?: string
  /**
   * Overrides the pool's `callTimeout` for this call. For a stream it bounds the wait for each
   * next chunk (idle time), not the whole stream.
   */
  readonly timeout?: Duration.DurationInput
  /**
   * Streams: extra chunks to read ahead of the consumer, on top of grpc-js's own read-ahead
   * (16 messages, then HTTP/2 flow control pauses the Python producer). Default: none.
   */
  readonly buffer?: number
  /** Raw binary values passed beside the JSON arguments (`ctx.attachments` in Python). */
  readonly attachments?: Readonly<Record<string, Uint8Array>>
  /**
   * For routers that move sessions between pools (the cluster): the session's state was lost
   * elsewhere, and the tool should see `ctx.session_moved`. The pool sets it itself when `hint`
   * affinity serves a session away from its home worker.
   */
  readonly sessionMoved?: boolean
}

/** A tool a pool's adapter offers, as discovered from its workers. */
export interface ToolDescription {
  readonly name: string
  readonly description: string
  /** A generator tool: call it with `executeStream`. */
  readonly streaming: boolean
  readonly parameters: ReadonlyArray<{
    readonly name: string
    /** The Python annotation as written, or "" when there is none. */
    readonly type: string
    readonly required: boolean
    /** The default value, when the parameter has one. */
    readonly default?: unknown
  }>
  /**
   * The annotations as types (parameters and result, for a stream each chunk), for typed
   * clients (`snakepit codegen`); absent when the worker did not report them.
   */
  readonly types?: ToolTypes
}

/** A worker as the pool sees it. */
export interface WorkerInfo {
  readonly id: string
  readonly pool: string
  readonly pid: number
  /** "ready": idle; "busy": serving a call; "stopping": retiring (draining or shutting down). */
  readonly state: "starting" | "ready" | "busy" | "stopping"
  /** Calls completed by this worker. */
  readonly calls: number
  readonly startedAt: Date
}

/** Counters and gauges of one pool. */
export interface PoolStats {
  readonly pool: string
  /** Worker slots: the configured number of workers, or an elastic pool's current size. */
  readonly size: number
  /** Workers able to serve (idle or busy). */
  readonly ready: number
  /** Workers serving at least one call. */
  readonly busy: number
  /** Callers waiting for a worker. */
  readonly queued: number
  /** Calls started. */
  readonly requests: number
  /** Calls that failed, for any reason. */
  readonly errors: number
  readonly queueTimeouts: number
  /** Workers started again after a crash, failed health check, failed start or recycling. */
  readonly restarts: number
}

/** A worker id, or a `WorkerInfo` obtained from `workers()`. */
export type WorkerRef = string | Pick<WorkerInfo, "id">

/** What the `Snakepit` service offers. */
export interface SnakepitService {
  /** Runs `tool` with `args` (an object of named parameters) on a worker and decodes its JSON result. */
  readonly execute: (tool: string, args?: unknown, options?: CallOptions) => Effect.Effect<unknown, CallError>
  /**
   * Runs a streaming (generator) tool as a `Stream` with back-pressure end to end. A worker is
   * held only while the stream runs; ending it early cancels the RPC and closes the generator.
   */
  readonly executeStream: (tool: string, args?: unknown, options?: CallOptions) => Stream.Stream<unknown, CallError>
  /** The tools of one pool's adapter (default: the first pool), with parameters and descriptions. */
  readonly describeTools: (pool?: string) => Effect.Effect<ReadonlyArray<ToolDescription>, CallError>
  /** Stats of one pool (default: the first). */
  readonly stats: (pool?: string) => Effect.Effect<PoolStats, PoolNotFound>
  /** The live workers of one pool (default: the first). */
  readonly workers: (pool?: string) => Effect.Effect<ReadonlyArray<WorkerInfo>, PoolNotFound>
  /** Every pool's name. */
  readonly pools: ReadonlyArray<string>
  /**
   * Stops a worker (after its calls finish) and does not replace it; completes when the OS
   * process is gone.
   */
  readonly stopWorker: (worker: WorkerRef) => Effect.Effect<void, WorkerNotFound>
  /**
   * Replaces a worker: drains it, waits until its process is gone, starts a new one, and
   * returns the new worker once it is ready.
   */
  readonly restartWorker: (
    worker: WorkerRef
  ) => Effect.Effect<WorkerInfo, WorkerNotFound | WorkerStartError | PoolClosed>
  /** Completes when every slot of the pool has a ready worker. */
  readonly awaitReady: (pool?: string) => Effect.Effect<void, PoolNotFound>
  /**
   * Sets one pool's size at run time: a number fixes it, `{ min, max }` makes it elastic.
   * Workers are started (in the startup window) or retired (idle ones first, busy ones after
   * their calls) at once; completes with the new bounds without waiting for them. A bad size
   * is a `ConfigError` keyed `size`.
   */
  readonly resize: (
    size: PoolSize,
    pool?: string
  ) => Effect.Effect<{ readonly min: number; readonly max: number }, PoolNotFound | ConfigError>
  /**
   * Drains one pool: new and queued calls fail with `PoolDraining`, the calls in flight run to
   * their end; completes when none is left. The workers stay up until the pool closes.
   */
  readonly drain: (pool?: string) => Effect.Effect<void, PoolNotFound>
  /** One pool as an operator sees it: bounds, stats, workers in detail, per-tool latency (p50/p99). */
  readonly report: (pool?: string) => Effect.Effect<PoolReport, PoolNotFound>
  /**
   * Every pool's events from now on (worker started, ready, crashed, recycled, restarted,
   * queue full, resized...). A subscriber that falls more than 1024 events behind loses the oldest.
   */
  readonly events: Stream.Stream<PoolEvent>
}

/** The Snakepit service. Provide it with `SnakepitPool.layer(options)`. */
export class Snakepit extends Context.Tag("@snakepit/core/Snakepit")<Snakepit, SnakepitService>() {}
