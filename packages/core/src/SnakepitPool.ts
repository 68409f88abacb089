/**
 * `SnakepitPool.layer(options)`: the `Snakepit` service backed by pools of Python workers.
 *
 * @since 0.1.0
 */
import { Effect, Layer, type Scope, Stream } from "effect"
import { type ConfigError, PoolNotFound, type PoolStartError, WorkerNotFound } from "./errors.js"
import { resolveSnakepitOptions } from "./internal/config.js"
import * as Pool from "./internal/pool.js"
import type { SnakepitOptions } from "./PoolOptions.js"
import { Snakepit, type SnakepitService, type WorkerRef } from "./Snakepit.js"
import { WorkerFactory } from "./WorkerFactory.js"

/**
 * Starts every pool in `options` in the current scope and returns the service. Closing the
 * scope stops every worker.
 */
export const make = (
  options: SnakepitOptions = {}
): Effect.Effect<SnakepitService, PoolStartError | ConfigError, Scope.Scope | WorkerFactory> =>
  Effect.gen(function* () {
    const resolved = yield* resolveSnakepitOptions(options)
    const pools = yield* Effect.forEach(resolved, Pool.make, { concurrency: "unbounded" })
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

/** The `Snakepit` service with real Python workers. */
export const layer = (options: SnakepitOptions = {}): Layer.Layer<Snakepit, PoolStartError | ConfigError> =>
  layerWithoutDependencies(options).pipe(Layer.provide(WorkerFactory.node))
