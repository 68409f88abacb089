/**
 * A Promise facade over the `Snakepit` service, for code that does not use Effect.
 *
 * @since 0.1.0
 */
import { Cause, Effect, Exit, Layer, Logger, LogLevel, ManagedRuntime, Stream } from "effect"
import { ConfigError, PoolClosed } from "./errors.js"
import type { PoolSize, SnakepitOptions } from "./PoolOptions.js"
import type { PoolReport } from "./PoolReport.js"
import { type CallOptions, type PoolStats, Snakepit, type WorkerInfo, type WorkerRef } from "./Snakepit.js"
import * as SnakepitPool from "./SnakepitPool.js"

/** How much `createPool` logs. */
export type PoolLogLevel = "all" | "debug" | "info" | "warning" | "error" | "none"

/** Options of {@link createPool}: the pool's, plus its logging. */
export interface CreatePoolOptions extends SnakepitOptions {
  /**
   * The least severe log line printed (worker restarts, recycling, orphans swept). Lines go
   * to stderr, never stdout, which stays the application's own. Default "info".
   */
  readonly logLevel?: PoolLogLevel
}

const logLevels: Record<PoolLogLevel, LogLevel.LogLevel> = {
  all: LogLevel.All,
  debug: LogLevel.Debug,
  info: LogLevel.Info,
  warning: LogLevel.Warning,
  error: LogLevel.Error,
  none: LogLevel.None
}

/** logfmt lines on stderr, at `level` and above. */
const stderrLogging = (level: PoolLogLevel) =>
  Layer.merge(
    Logger.replace(Logger.defaultLogger, Logger.withConsoleError(Logger.logfmtLogger)),
    Logger.minimumLogLevel(logLevels[level])
  )

/** A started pool. Every rejection is the tagged error itself (match on `error._tag`). */
export interface PoolClient {
  readonly execute: (tool: string, args?: unknown, options?: CallOptions) => Promise<unknown>
  /**
   * The chunks of a streaming tool, pulled with back-pressure. Leaving the loop (`break`,
   * `return`, an exception) cancels the call and frees the worker.
   */
  readonly stream: (tool: string, args?: unknown, options?: CallOptions) => AsyncIterable<unknown>
  readonly stats: (pool?: string) => Promise<PoolStats>
  readonly workers: (pool?: string) => Promise<ReadonlyArray<WorkerInfo>>
  readonly stopWorker: (worker: WorkerRef) => Promise<void>
  readonly restartWorker: (worker: WorkerRef) => Promise<WorkerInfo>
  readonly awaitReady: (pool?: string) => Promise<void>
  /** New size of a pool: a number, or `{ min, max }` for an elastic pool; rejects with `ConfigError`. */
  readonly resize: (size: PoolSize, pool?: string) => Promise<{ readonly min: number; readonly max: number }>
  /** New and queued calls fail with `PoolDraining`; resolves once the running calls ended. */
  readonly drain: (pool?: string) => Promise<void>
  /** Bounds, stats, workers in detail, per-tool latency. */
  readonly report: (pool?: string) => Promise<PoolReport>
  /** Stops every worker; resolves when their processes are gone. */
  readonly close: () => Promise<void>
}

/** Pools made by `createPool` and not yet closed: SIGINT/SIGTERM close them before the process exits. */
const openPools = new Set<PoolClient>()

const onSignal = (signal: NodeJS.Signals) => {
  process.removeListener("SIGINT", onSignal)
  process.removeListener("SIGTERM", onSignal)
  // Graceful: the finalizers stop every worker; then the signal takes its usual course.
  void Promise.allSettled([...openPools].map((pool) => pool.close())).then(() => process.kill(process.pid, signal))
}

const track = (pool: PoolClient) => {
  if (openPools.size === 0) {
    process.once("SIGINT", onSignal)
    process.once("SIGTERM", onSignal)
  }
  openPools.add(pool)
}

const untrack = (pool: PoolClient) => {
  openPools.delete(pool)
  if (openPools.size === 0) {
    process.removeListener("SIGINT", onSignal)
    process.removeListener("SIGTERM", onSignal)
  }
}

/** The typed failure when there is one; otherwise the defect or interruption as an Error. */
const toRejection = <E>(cause: Cause.Cause<E>): unknown => {
  const failure = Cause.failureOption(cause)
  return failure._tag === "Some" ? failure.value : Cause.squash(cause)
}

/**
 * Starts a pool (default: 2 workers of the built-in showcase adapter) and resolves once it
 * is ready; rejects with `PoolStartError` or `ConfigError`. While it is open, SIGINT and
 * SIGTERM close it (stopping every worker) before the signal ends the process.
 */
export const createPool = async (options: CreatePoolOptions = {}): Promise<PoolClient> => {
  const { logLevel = "info", ...poolOptions } = options
  // Checked at run time too: JavaScript callers get no type check ("toString" is not a level).
  if (!Object.hasOwn(logLevels, logLevel)) {
    throw new ConfigError({
      key: "logLevel",
      value: String(logLevel),
      reason: `expected one of ${Object.keys(logLevels).join(", ")}`
    })
  }
  const logging = stderrLogging(logLevel)
  // The logger also covers the layer's own startup (the orphan sweep) and its background fibers.
  const runtime = ManagedRuntime.make(
    Layer.merge(SnakepitPool.layer(poolOptions).pipe(Layer.provide(logging)), logging)
  )
  let closed = false

  const run = async <A, E>(effect: Effect.Effect<A, E, Snakepit>): Promise<A> => {
    if (closed) throw new PoolClosed({ pool: "*" })
    const exit = await runtime.runPromiseExit(effect)
    if (Exit.isSuccess(exit)) return exit.value
    throw toRejection(exit.cause)
  }
  const withService = <A, E>(f: (service: Snakepit["Type"]) => Effect.Effect<A, E>) => run(Effect.flatMap(Snakepit, f))

  try {
    await run(Snakepit)
  } catch (error) {
    await runtime.dispose()
    throw error
  }
  const rt = await runtime.runtime()

  const client: PoolClient = {
    execute: (tool, args, options) => withService((s) => s.execute(tool, args, options)),
    stream: (tool, args, options) => ({
      [Symbol.asyncIterator]: () => {
        if (closed) throw new PoolClosed({ pool: "*" })
        const chunks = Stream.unwrap(Effect.map(Snakepit, (s) => s.executeStream(tool, args, options)))
        // Failures surface as the tagged error itself (Cause.squash of a failure is the error).
        return Stream.toAsyncIterableRuntime(chunks, rt)[Symbol.asyncIterator]()
      }
    }),
    stats: (pool) => withService((s) => s.stats(pool)),
    workers: (pool) => withService((s) => s.workers(pool)),
    stopWorker: (worker) => withService((s) => s.stopWorker(worker)),
    restartWorker: (worker) => withService((s) => s.restartWorker(worker)),
    awaitReady: (pool) => withService((s) => s.awaitReady(pool)),
    resize: (size, pool) => withService((s) => s.resize(size, pool)),
    drain: (pool) => withService((s) => s.drain(pool)),
    report: (pool) => withService((s) => s.report(pool)),
    close: async () => {
      if (closed) return
      closed = true
      untrack(client)
      await runtime.dispose()
    }
  }
  track(client)
  return client
}
