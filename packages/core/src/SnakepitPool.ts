/**
 * `SnakepitPool.layer(options)`: the `Snakepit` service backed by pools of Python workers.
 *
 * @since 0.1.0
 */
import { HostBridgeServer } from "@snakepit/grpc"
import { Registry, type RegistryError, RunId } from "@snakepit/registry"
import { Effect, Layer, Option, type Scope, Stream } from "effect"
import { ConfigError, PoolNotFound, PoolStartError, WorkerNotFound } from "./errors.js"
import { HostTools } from "./HostTool.js"
import { resolveSnakepitOptions } from "./internal/config.js"
import * as Pool from "./internal/pool.js"
import type { SnakepitOptions } from "./PoolOptions.js"
import { Snakepit, type SnakepitService, type WorkerRef } from "./Snakepit.js"
import { WorkerFactory } from "./WorkerFactory.js"

/** A registry that cannot be used, as the `dataDir` ConfigError a caller acts on. */
const dataDirError = (dataDir: string, message: string) =>
  new ConfigError({ key: "dataDir", value: dataDir, reason: message })

/**
 * With a process registry: records this run (its lock, then its row), then sweeps what dead runs
 * left behind (workers whose host died without cleaning up), before any worker of ours starts.
 * A run that cannot be recorded (a full disk, a run id another live process holds) fails the
 * pool with a ConfigError for `dataDir`: no worker could be recorded either.
 */
const startRun = Effect.gen(function* () {
  const registry = yield* Effect.serviceOption(Registry)
  if (Option.isNone(registry)) return
  const { dataDir } = registry.value
  const runId = yield* RunId.current
  const logged = <A>(effect: Effect.Effect<A, RegistryError>) =>
    effect.pipe(Effect.catchTag("RegistryError", (e) => Effect.logWarning(`registry: ${e.message}`)))
  yield* registry.value.startRun(runId).pipe(
    Effect.catchTags({
      RegistryError: (e) => Effect.fail(dataDirError(dataDir, `the registry cannot record run ${runId}: ${e.reason}`)),
      RegistryUnavailable: (e) => Effect.fail(dataDirError(e.dataDir, e.message))
    })
  )
  yield* Effect.addFinalizer(() => logged(registry.value.endRun(runId)))
  yield* logged(registry.value.sweep())
})

/**
 * When `HostTools` are provided, serves them on a loopback bridge for the pools' lifetime and
 * returns the environment that tells workers where it is and the per-run secret.
 */
const startHostBridge = Effect.gen(function* () {
  const hostTools = yield* Effect.serviceOption(HostTools)
  if (Option.isNone(hostTools)) return {}
  const tools = hostTools.value
  const server = yield* HostBridgeServer.make({ handler: tools.call, listTools: () => tools.tools }).pipe(
    Effect.mapError(
      (e) => new PoolStartError({ pool: "*", detail: `the host-tool bridge could not start: ${e.message}`, causes: [] })
    )
  )
  return server.env
})

/**
 * Starts every pool in `options` in the current scope and returns the service. Closing the
 * scope stops every worker.
 */
export const make = (
  options: SnakepitOptions = {}
): Effect.Effect<SnakepitService, PoolStartError | ConfigError, Scope.Scope | WorkerFactory> =>
  Effect.gen(function* () {
    const resolved = yield* resolveSnakepitOptions(options)
    yield* startRun
    const hostEnv = yield* startHostBridge
    const pools = yield* Effect.forEach(resolved, (pool) => Pool.make({ ...pool, env: { ...pool.env, ...hostEnv } }), {
      concurrency: "unbounded"
    })
    const names = pools.map((pool) => pool.name)

    const poolOf = (name: string | undefined): Effect.Effect<Pool.Pool, PoolNotFound> => {
      const pool = name === undefined ? pools[0] : pools.find((p) => p.name === name)
      return pool ? Effect.succeed(pool) : Effect.fail(new PoolNotFound({ pool: name ?? "", available: names }))
    }

    // The one lookup path for stop and restart, by id or by handle (LESSONS #2, #3).
    const locate = (ref: WorkerRef) =>
      Effect.suspend(() => {
        const workerId = typeof ref === "string" ? ref : ref.id
        for (const pool of pools) {
          const entry = pool.find(workerId)
          if (entry && entry.retiring === undefined) return Effect.succeed({ pool, entry })
        }
        return Effect.fail(new WorkerNotFound({ workerId }))
      })

    return Snakepit.of({
      pools: names,
      execute: (tool, args, callOptions = {}) =>
        Effect.flatMap(poolOf(callOptions.pool), (pool) => pool.execute(tool, args, callOptions)),
      executeStream: (tool, args, callOptions = {}) =>
        Stream.unwrap(Effect.map(poolOf(callOptions.pool), (pool) => pool.executeStream(tool, args, callOptions))),
      describeTools: (pool) => Effect.flatMap(poolOf(pool), (p) => p.describeTools),
      stats: (pool) => Effect.flatMap(poolOf(pool), (p) => p.stats),
      workers: (pool) => Effect.flatMap(poolOf(pool), (p) => p.workers),
      awaitReady: (pool) => Effect.flatMap(poolOf(pool), (p) => p.awaitReady),
      stopWorker: (ref) => Effect.flatMap(locate(ref), ({ entry, pool }) => pool.stopWorker(entry)),
      restartWorker: (ref) => Effect.flatMap(locate(ref), ({ entry, pool }) => pool.restartWorker(entry))
    })
  })

/** The `Snakepit` service for a `WorkerFactory` you provide (the testkit's fake, for instance). */
export const layerWithoutDependencies = (
  options: SnakepitOptions = {}
): Layer.Layer<Snakepit, PoolStartError | ConfigError, WorkerFactory> => Layer.scoped(Snakepit, make(options))

/**
 * The process registry at `options.dataDir` (else `SNAKEPIT_DATA_DIR`, else a per-user
 * directory); a data dir that cannot be used is a `ConfigError` naming it.
 */
const registryLayer = (options: SnakepitOptions) =>
  Registry.layer(options.dataDir === undefined ? {} : { dataDir: options.dataDir }).pipe(
    Layer.mapError((e) => dataDirError(e.dataDir, e.message))
  )

/** The `Snakepit` service with real Python workers, recorded in the process registry. */
export const layer = (options: SnakepitOptions = {}): Layer.Layer<Snakepit, PoolStartError | ConfigError> =>
  layerWithoutDependencies(options).pipe(Layer.provide(WorkerFactory.node), Layer.provide(registryLayer(options)))
