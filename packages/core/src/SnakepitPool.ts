/**
 * `SnakepitPool.layer(options)`: the `Snakepit` service backed by pools of Python workers.
 *
 * @since 0.1.0
 */
import { Registry, type RegistryError, RunId } from "@snakepit/registry"
import { Effect, Layer, Option, PubSub, type Scope, Stream } from "effect"
import * as Control from "./Control.js"
import { ConfigError, PoolNotFound, type PoolStartError, WorkerNotFound } from "./errors.js"
import { HostTools } from "./HostTool.js"
import { resolveControl, resolveSnakepitOptions } from "./internal/config.js"
import * as ControlServer from "./internal/controlServer.js"
import * as GrpcHostBridge from "./internal/grpc/hostBridge.js"
import * as Pool from "./internal/pool.js"
import type { ResolvedPoolOptions, SnakepitOptions } from "./PoolOptions.js"
import type { PoolEvent } from "./PoolReport.js"
import { Snakepit, type SnakepitService, type WorkerRef } from "./Snakepit.js"
import { WorkerFactory } from "./WorkerFactory.js"

/** A registry that cannot be used, as the `dataDir` ConfigError a caller acts on. */
const dataDirError = (dataDir: string, message: string) =>
  new ConfigError({ key: "dataDir", value: dataDir, reason: message })

const logged = <A>(effect: Effect.Effect<A, RegistryError>) =>
  effect.pipe(Effect.catchTag("RegistryError", (e) => Effect.logWarning(`registry: ${e.message}`)))

/**
 * With a process registry: records this run (its lock, then its row), then sweeps what dead runs
 * left behind (workers whose host died without cleaning up), before any worker of ours starts.
 * A run that cannot be recorded (a full disk, a run id another live process holds) fails the
 * pool with a ConfigError for `dataDir`: no worker could be recorded either.
 */
const startRun = Effect.gen(function* () {
  const registry = yield* Effect.serviceOption(Registry)
  if (Option.isNone(registry)) return Option.none()
  const { dataDir } = registry.value
  const runId = yield* RunId.current
  yield* registry.value.startRun(runId).pipe(
    Effect.catchTags({
      RegistryError: (e) => Effect.fail(dataDirError(dataDir, `the registry cannot record run ${runId}: ${e.reason}`)),
      RegistryUnavailable: (e) => Effect.fail(dataDirError(e.dataDir, e.message))
    })
  )
  yield* Effect.addFinalizer(() => logged(registry.value.endRun(runId)))
  yield* logged(registry.value.sweep())
  return Option.some({ registry: registry.value, runId })
})

/**
 * Serves the control API on `<dataDir>/control/<runId>.sock` and records the path in the run's
 * row. A socket that cannot be served is logged, never fatal: the pools work without it.
 */
const startControl = (
  service: SnakepitService,
  run: { readonly registry: Registry["Type"]; readonly runId: string }
) => {
  const socket = Control.socketPath(run.registry.dataDir, run.runId)
  return ControlServer.serve(service, { socket, runId: run.runId }).pipe(
    Effect.zipRight(logged(run.registry.setControlSocket(run.runId, socket))),
    Effect.catchTag("ControlServeError", (e) => Effect.logWarning(`control socket ${e.socket} not served: ${e.reason}`))
  )
}

/**
 * When `HostTools` are provided: local workers call them over their own channel; for gRPC
 * workers they are served on a loopback bridge (per-run secret) for the pools' lifetime.
 */
const hostToolsFor = (pools: ReadonlyArray<ResolvedPoolOptions>) =>
  Effect.gen(function* () {
    const hostTools = yield* Effect.serviceOption(HostTools)
    if (Option.isNone(hostTools)) return {}
    const tools = hostTools.value
    if (!pools.some((pool) => pool.transport === "grpc")) return { hostTools: tools }
    return { hostTools: tools, hostBridge: yield* GrpcHostBridge.serve(tools) }
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
    const control = yield* resolveControl(options.control)
    const run = yield* startRun
    const host = yield* hostToolsFor(resolved)
    // Sliding: a subscriber that falls behind loses the oldest events, never slows a pool down.
    const events = yield* PubSub.sliding<PoolEvent>(1024)
    const pools = yield* Effect.forEach(resolved, (pool) => Pool.make(pool, events, host), { concurrency: "unbounded" })
    const names = pools.map((pool) => pool.name)

    const poolOf = (name: string | undefined): Effect.Effect<Pool.Pool, PoolNotFound> => {
      const pool = name === undefined ? pools[0] : pools.find((p) => p.name === name)
      return pool ? Effect.succeed(pool) : Effect.fail(new PoolNotFound({ pool: name ?? "", available: names }))
    }

    // The one lookup path for stop and restart, by id or by handle (LESSONS #2, #3).
    const owner = (ref: WorkerRef) =>
      Effect.suspend(() => {
        const workerId = typeof ref === "string" ? ref : ref.id
        const pool = pools.find((p) => p.hasWorker(workerId))
        return pool ? Effect.succeed({ pool, workerId }) : Effect.fail(new WorkerNotFound({ workerId }))
      })

    const service = Snakepit.of({
      pools: names,
      execute: (tool, args, callOptions = {}) =>
        Effect.flatMap(poolOf(callOptions.pool), (pool) => pool.execute(tool, args, callOptions)),
      executeStream: (tool, args, callOptions = {}) =>
        Stream.unwrap(Effect.map(poolOf(callOptions.pool), (pool) => pool.executeStream(tool, args, callOptions))),
      describeTools: (pool) => Effect.flatMap(poolOf(pool), (p) => p.describeTools),
      stats: (pool) => Effect.flatMap(poolOf(pool), (p) => p.stats),
      workers: (pool) => Effect.flatMap(poolOf(pool), (p) => p.workers),
      awaitReady: (pool) => Effect.flatMap(poolOf(pool), (p) => p.awaitReady),
      stopWorker: (ref) => Effect.flatMap(owner(ref), ({ pool, workerId }) => pool.stopWorker(workerId)),
      restartWorker: (ref) => Effect.flatMap(owner(ref), ({ pool, workerId }) => pool.restartWorker(workerId)),
      resize: (size, pool) => Effect.flatMap(poolOf(pool), (p) => p.resize(size)),
      drain: (pool) => Effect.flatMap(poolOf(pool), (p) => p.drain),
      report: (pool) => Effect.flatMap(poolOf(pool), (p) => p.report),
      events: Stream.fromPubSub(events)
    })
    if (control && Option.isSome(run)) yield* startControl(service, run.value)
    return service
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
