/**
 * Options of a pool: what a user writes, and the fully resolved form the pool runs with.
 *
 * @since 0.1.0
 */
import type { Duration } from "effect"
import type * as ThreadLimits from "./ThreadLimits.js"
import type { Transport } from "./WorkerFactory.js"

/** How calls with a `session` are routed to the session's worker. */
export type Affinity = "hint" | "strict_queue" | "strict_fail_fast"

/**
 * A pool's size: a fixed number of workers, or the bounds of an elastic pool, which starts
 * `min` workers, adds workers while callers wait longer than `scaleUpAfter` (up to `max`) and
 * retires workers idle longer than `idleTimeout` (down to `min`).
 */
export type PoolSize = number | { readonly min: number; readonly max: number }

/** Options of one pool. Every field is optional; see {@link ResolvedPoolOptions} for the defaults. */
export interface PoolOptions {
  /** Number of workers, or `{ min, max }` for an elastic pool. Default 2 (env `SNAKEPIT_SIZE`: `4` or `2..8`). */
  readonly size?: PoolSize
  /**
   * Elastic pools: add a worker (up to `max`) when a caller has waited this long for one.
   * Default 1 second (env `SNAKEPIT_SCALE_UP_AFTER`).
   */
  readonly scaleUpAfter?: Duration.DurationInput
  /**
   * Elastic pools: retire a worker idle this long (down to `min`; never a live session's
   * worker). Default 5 minutes (env `SNAKEPIT_IDLE_TIMEOUT`; may be infinite).
   */
  readonly idleTimeout?: Duration.DurationInput
  /** Workers that must be ready for the layer to start. Default: `size` (its `min`). */
  readonly minReady?: number
  /** Calls one worker serves at once. Default 1. */
  readonly capacity?: number
  /** `module` or `module:Class`. Default: the built-in showcase adapter (env `SNAKEPIT_ADAPTER`). */
  readonly adapter?: string
  /**
   * Interpreter: any Python 3.10+ with grpcio and protobuf, e.g. a venv's, conda env's or uv
   * venv's `bin/python`, or a name on PATH (a pyenv shim is run once to find the real
   * interpreter; workers are spawned with that). Pools may use different ones. Default:
   * `SNAKEPIT_PYTHON`, else the first of python3, /usr/bin/python3, python that imports grpc.
   */
  readonly python?: string
  /** Extra PYTHONPATH entries, where your adapter lives (env `SNAKEPIT_PYTHON_PATH`, `:`-separated). */
  readonly pythonPath?: ReadonlyArray<string>
  /** Extra environment for the workers. */
  readonly env?: Readonly<Record<string, string>>
  /** Thread limits of numeric libraries; a partial override merges with the defaults (all 1). */
  readonly threadLimits?: Partial<ThreadLimits.ThreadLimits>
  /**
   * Workers starting at once during startup: a rolling window, the next starts as soon as one is
   * ready or failed. Default 8 (env `SNAKEPIT_STARTUP_BATCH_SIZE`).
   */
  readonly startupBatchSize?: number
  /** Pause before each start beyond the first window of `startupBatchSize`. Default 0 (env `SNAKEPIT_STARTUP_BATCH_DELAY`). */
  readonly startupBatchDelay?: Duration.DurationInput
  /** Time for each worker to become ready (startup takes up to one of these per window). Default 30 s (env `SNAKEPIT_STARTUP_TIMEOUT`). */
  readonly startupTimeout?: Duration.DurationInput
  /** Default per-call timeout. Default 60 s (env `SNAKEPIT_CALL_TIMEOUT`). */
  readonly callTimeout?: Duration.DurationInput
  /** Time each shutdown step of a worker may take. Default 2 s. */
  readonly gracefulTimeout?: Duration.DurationInput
  /** The queue of callers waiting for a worker. */
  readonly queue?: {
    /** Callers allowed to wait; one more gets `QueueFull`. Default 1000 (env `SNAKEPIT_QUEUE_MAX`). */
    readonly max?: number
    /** Longest wait for a worker; then `QueueTimeout`. Default 30 s (env `SNAKEPIT_QUEUE_TIMEOUT`). */
    readonly timeout?: Duration.DurationInput
  }
  /**
   * Session routing (env `SNAKEPIT_AFFINITY`):
   *
   * - `strict_queue` (default): a session's call waits for its worker (bounded by `queue.timeout`),
   *   so the tool always sees the session's state. Use it unless you know you need another.
   * - `strict_fail_fast`: `WorkerBusy` at once when the session's worker is busy; for callers that
   *   would rather retry or shed load than wait.
   * - `hint`: a busy (or dead) session worker's call goes to another worker, whose Python side does
   *   not have the session's state; the tool sees `ctx.session_moved` and must cope (sessions as a
   *   cache, not as the truth). `snakepit_session_fallbacks_total` counts those calls.
   *
   * In the strict modes a session whose worker died gets `SessionWorkerUnavailable` once, then
   * starts over on another worker.
   */
  readonly affinity?: Affinity
  /** Sessions: idle expiry and how many are kept. */
  readonly sessions?: {
    /** A session unused this long is dropped (and cleaned up in its worker). Default 30 min. */
    readonly ttl?: Duration.DurationInput
    /** Most sessions kept; the least recently used goes first. Default 10 000. */
    readonly max?: number
  }
  /** Replace a worker after so many calls, so long, or so much memory. A busy worker is drained first. */
  readonly recycle?: {
    readonly maxCalls?: number
    readonly ttl?: Duration.DurationInput
    readonly maxRssMb?: number
  }
  /** Health checks on the Effect clock. */
  readonly healthCheck?: {
    /** Default 10 s. */
    readonly interval?: Duration.DurationInput
    /** Default 5 s. */
    readonly timeout?: Duration.DurationInput
    /** Consecutive misses before the worker is replaced. Default 3. */
    readonly maxMisses?: number
  }
  /**
   * Restarting workers. A worker that started and then died is restarted after a delay that
   * doubles with each crash within `window` (jittered, at most `maxDelay`): a crash storm slows
   * restarts but never stops a slot that can start workers. A slot whose worker cannot even
   * start (a broken environment) backs off likewise, and after `maxRestarts` failed starts in a
   * row cools down for `cooldown`.
   */
  readonly restart?: {
    /** First delay. Default 100 ms. */
    readonly baseDelay?: Duration.DurationInput
    /** Largest delay. Default 10 s. */
    readonly maxDelay?: Duration.DurationInput
    /** Failed starts in a row before the slot cools down (and crashes within `window` before a warning). Default 5. */
    readonly maxRestarts?: number
    /** How far back crashes count towards the delay. Default 60 s. */
    readonly window?: Duration.DurationInput
    /** Pause of a slot whose starts keep failing, before it tries again. Default 30 s. */
    readonly cooldown?: Duration.DurationInput
  }
  /** How long a retiring worker may finish its calls. Default 30 s. */
  readonly drainTimeout?: Duration.DurationInput
  /**
   * How long a cancelled call (timed out, interrupted, a stream ended early) may keep running in
   * Python before its worker is replaced. The worker is not handed out meanwhile. Default 5 s
   * (env `SNAKEPIT_CANCEL_GRACE`).
   */
  readonly cancelGrace?: Duration.DurationInput
  /** Largest message in either direction, on either transport. Default 64 MiB. */
  readonly maxMessageBytes?: number
  /**
   * Check each call's arguments against the tool's Python annotations before it runs: a value
   * that does not fit is `InvalidArguments` naming the parameter and the expected type. An
   * adapter can opt in on its own (`validate_arguments = True`). Default false (env
   * `SNAKEPIT_VALIDATE_ARGUMENTS`).
   */
  readonly validateArguments?: boolean
  /**
   * How the host talks to its workers. `local` (default): a private socket pair each worker
   * inherits; no port, no secret, only the standard library in Python, and the fastest. `grpc`:
   * gRPC with a per-worker token, for users who want gRPC tooling (needs grpcio and protobuf in
   * the worker's environment). Env `SNAKEPIT_TRANSPORT`.
   */
  readonly transport?: Transport
  /** gRPC transport only. */
  readonly grpc?: {
    /** `loopback` (default): a 127.0.0.1 port; `unix`: a 0600 unix socket in a 0700 directory. */
    readonly listen?: "loopback" | "unix"
  }
  /** Where state lives (the process registry). Default `SNAKEPIT_DATA_DIR`, else a per-user directory. */
  readonly dataDir?: string
}

/** Options of the pool layer: one pool, or named pools that each override these defaults. */
export interface SnakepitOptions extends PoolOptions {
  /** Named pools; calls choose one with `opts.pool`. The first is the default. */
  readonly pools?: Readonly<Record<string, PoolOptions>>
  /**
   * Serve the control API (`Control`) on a 0600 unix socket in the data dir, for `snakepit
   * status`, `top`, `restart`, `resize`, `drain`, `events`. Default true (env `SNAKEPIT_CONTROL`).
   * Needs the process registry (it records the socket's path); there is never a TCP listener.
   */
  readonly control?: boolean
}

/** Every option with its value decided. */
export interface ResolvedPoolOptions {
  readonly name: string
  /** Workers started with the pool: the fixed size, or an elastic pool's `min`. */
  readonly size: number
  /** Most workers: `size` for a fixed pool. */
  readonly maxSize: number
  readonly scaleUpAfter: Duration.Duration
  readonly idleTimeout: Duration.Duration
  readonly minReady: number
  readonly capacity: number
  readonly adapter: string
  readonly python: string | undefined
  readonly pythonPath: ReadonlyArray<string>
  readonly env: Readonly<Record<string, string>>
  readonly threadLimits: ThreadLimits.ThreadLimits
  readonly startupBatchSize: number
  readonly startupBatchDelay: Duration.Duration
  readonly startupTimeout: Duration.Duration
  readonly callTimeout: Duration.Duration
  readonly gracefulTimeout: Duration.Duration
  readonly queue: { readonly max: number; readonly timeout: Duration.Duration }
  readonly affinity: Affinity
  readonly sessions: { readonly ttl: Duration.Duration; readonly max: number }
  readonly recycle: {
    readonly maxCalls: number | undefined
    readonly ttl: Duration.Duration | undefined
    readonly maxRssMb: number | undefined
  }
  readonly healthCheck: {
    readonly interval: Duration.Duration
    readonly timeout: Duration.Duration
    readonly maxMisses: number
  }
  readonly restart: {
    readonly baseDelay: Duration.Duration
    readonly maxDelay: Duration.Duration
    readonly maxRestarts: number
    readonly window: Duration.Duration
    readonly cooldown: Duration.Duration
  }
  readonly drainTimeout: Duration.Duration
  readonly cancelGrace: Duration.Duration
  readonly maxMessageBytes: number
  readonly validateArguments: boolean
  readonly transport: Transport
  readonly grpc: { readonly listen: "loopback" | "unix" }
  readonly dataDir: string | undefined
}
