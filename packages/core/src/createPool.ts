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

/** Options of {@link createPool}: the pool's, plus its logging and its signal handling. */
export interface CreatePoolOptions extends SnakepitOptions {
  /**
   * The least severe log line printed (worker restarts, recycling, orphans swept). Lines go
   * to stderr, never stdout, which stays the application's own. Default "info".
   */
  readonly logLevel?: PoolLogLevel
  /**
   * Whether SIGINT and SIGTERM close the pool. Default true: while the pool is open, a signal
   * the application does not handle itself closes every open pool (each worker stopped), then
   * takes its usual course (the process ends by that signal: exit status 128 + its number, 143
   * for SIGTERM). When the application has its own listener for the signal (added before or
   * after `createPool`), createPool's steps aside: the application decides when to close the
   * pool, e.g. after draining its requests, and its `exit` handlers run. `false`: createPool
   * adds no listener. Either way no worker outlives the process: `close()` stops them, and when
   * the process ends without it, the exit hook and each worker's parent-death watch do.
   */
  readonly handleSignals?: boolean
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

const SIGNALS = ["SIGINT", "SIGTERM"] as const
type HandledSignal = (typeof SIGNALS)[number]

/** Pools made by `createPool` (with `handleSignals`) and not yet closed: a signal nobody else handles closes them. */
const openPools = new Set<PoolClient>()

/**
 * Signals whose other listener was removed in the current turn. Node's `once` wrapper removes
 * itself before it runs, so a listener added with `once` (and ahead of ours) is gone from
 * `process.listeners` by the time ours runs for the very signal it handles.
 */
const justRemoved = new Set<string>()

const onListenerRemoved = (event: string | symbol, listener: unknown) => {
  if (typeof event !== "string" || listener === onSignal || !(SIGNALS as ReadonlyArray<string>).includes(event)) return
  justRemoved.add(event)
  queueMicrotask(() => justRemoved.delete(event))
}

/** True when someone other than createPool listens for `signal` (or did until this very emit). */
const applicationHandles = (signal: HandledSignal): boolean =>
  justRemoved.has(signal) || process.listeners(signal).some((listener) => listener !== onSignal)

function onSignal(signal: NodeJS.Signals): void {
  // The application decides: it may drain its requests first, then close the pool itself.
  if (applicationHandles(signal as HandledSignal)) return
  uninstall()
  // Graceful: the finalizers stop every worker; then the signal takes its usual course.
  void Promise.allSettled([...openPools].map((pool) => pool.close())).then(() => process.kill(process.pid, signal))
}

const install = () => {
  // First in line, so that an application's `once` listener added earlier is still listed.
  for (const signal of SIGNALS) process.prependListener(signal, onSignal)
  process.on("removeListener", onListenerRemoved)
}

const uninstall = () => {
  for (const signal of SIGNALS) process.removeListener(signal, onSignal)
  process.removeListener("removeListener", onListenerRemoved)
}

const track = (pool: PoolClient) => {
  if (openPools.size === 0) install()
  openPools.add(pool)
}

const untrack = (pool: PoolClient) => {
  if (!openPools.delete(pool)) return
  if (openPools.size === 0) uninstall()
}

/** The typed failure when there is one; otherwise the defect or interruption as an Error. */
const toRejection = <E>(cause: Cause.Cause<E>): unknown => {
  const failure = Cause.failureOption(cause)
  return failure._tag === "Some" ? failure.value : Cause.squash(cause)
}

/**
 * Starts a pool (default: 2 workers of the built-in showcase adapter) and resolves once it
 * is ready; rejects with `PoolStartError` or `ConfigError`. While it is open, SIGINT and
 * SIGTERM that the application does not handle itself close it (stopping every worker) before
 * the signal ends the process; see {@link CreatePoolOptions.handleSignals}.
 */
export const createPool = async (options: CreatePoolOptions = {}): Promise<PoolClient> => {
  const { logLevel = "info", handleSignals = true, ...poolOptions } = options
  // Checked at run time too: JavaScript callers get no type check ("toString" is not a level).
  if (!Object.hasOwn(logLevels, logLevel)) {
    throw new ConfigError({
      key: "logLevel",
      value: String(logLevel),
      reason: `expected one of ${Object.keys(logLevels).join(", ")}`
    })
  }
  if (typeof handleSignals !== "boolean") {
    throw new ConfigError({ key: "handleSignals", value: String(handleSignals), reason: "expected true or false" })
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
  if (handleSignals) track(client)
  return client
}
