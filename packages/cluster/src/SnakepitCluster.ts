/**
 * `SnakepitCluster.layer(options)`: this process joins the cluster as a runner with its own
 * pool and provides the same `Snakepit` service as `SnakepitPool.layer`, served by the whole
 * cluster. `layerClient` joins without a pool. Storage is a `SqlClient` layer: `sqlite(...)`
 * for one machine, PostgreSQL (`@effect/sql-pg`) for several.
 *
 * @since 0.1.0
 */
import { randomUUID } from "node:crypto"
import { RunnerAddress, RunnerHealth, RunnerServer, Runners, Sharding, ShardingConfig } from "@effect/cluster"
import type * as SocketServer from "@effect/platform/SocketServer"
import { RpcSerialization, RpcServer } from "@effect/rpc"
import type { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { type Affinity, ConfigError, Diagnostics, type PoolStartError, Snakepit, SnakepitPool } from "@snakepit/core"
import { Config, Context, Duration, Effect, Layer, Option } from "effect"
import * as ClusterOptions from "./ClusterOptions.js"
import * as Client from "./internal/client.js"
import { layerRunners, type Written } from "./internal/delivery.js"
import * as Directory from "./internal/directory.js"
import { LocalPool, layerEntities, layerPublisher, RunnerIdentity } from "./internal/runner.js"
import * as Storage from "./internal/storage.js"
import { layerClientProtocol, layerSocketServer } from "./internal/transport.js"

/** A client's default call timeout: the pool's default, since it cannot know the runners' own. */
const CLIENT_CALL_TIMEOUT = Duration.seconds(60)

/**
 * A runner as it last published itself: its address, process, pools and workers.
 *
 * @since 0.1.0
 * @category models
 */
export type RunnerInfo = Directory.RunnerRecord

/**
 * What a cluster member knows beyond the `Snakepit` service.
 *
 * @since 0.1.0
 * @category services
 */
export class SnakepitCluster extends Context.Tag("@snakepit/cluster/SnakepitCluster")<
  SnakepitCluster,
  {
    /** The runners that published recently. */
    readonly runners: Effect.Effect<ReadonlyArray<RunnerInfo>>
    /** This process as a runner (its address and instance id), or none for a client. */
    readonly self: Option.Option<{ readonly address: string; readonly instance: string }>
    /** Within this bound a dead runner's sessions are served by the others (see the guide). */
    readonly failoverBound: Duration.Duration
    readonly options: ClusterOptions.ResolvedClusterOptions
  }
>() {}

const shardingConfig = (resolved: ClusterOptions.ResolvedClusterOptions, runner: boolean) =>
  ShardingConfig.layer({
    runnerAddress: runner
      ? Option.some(new RunnerAddress.RunnerAddress({ host: resolved.host, port: resolved.port }))
      : Option.none(),
    runnerListenAddress: runner
      ? Option.some(new RunnerAddress.RunnerAddress({ host: resolved.listenHost, port: resolved.port }))
      : Option.none(),
    runnerShardWeight: resolved.weight,
    shardsPerGroup: resolved.shards,
    shardLockExpiration: resolved.lockExpiration,
    shardLockRefreshInterval: resolved.lockExpiration,
    shardLockDisableAdvisory: !resolved.advisoryLocks,
    refreshAssignmentsInterval: resolved.refreshInterval,
    runnerHealthCheckInterval: resolved.healthCheckInterval,
    entityMaxIdleTime: resolved.entityMaxIdleTime,
    entityTerminationTimeout: resolved.entityTerminationTimeout,
    // Registration is immediate on a runner; a message for a type that never registers fails fast.
    entityRegistrationTimeout: resolved.deliveryTimeout,
    // The entity's own serialization runs only for messages that cross the wire.
    simulateRemoteSerialization: false
  })

const runnerSharding = (resolved: ClusterOptions.ResolvedClusterOptions) => {
  const written: Written = new Set()
  const clientProtocol = layerClientProtocol(resolved.secret, written)
  // Health pings go over their own connections; they carry no calls.
  const health = RunnerHealth.layerPing.pipe(
    Layer.provide(Runners.layerRpc),
    Layer.provide(layerClientProtocol(resolved.secret))
  )
  // SocketRunner.layer, with `Runners` that settle written-then-lost calls (see internal/delivery).
  return RunnerServer.layer.pipe(
    Layer.provideMerge(Sharding.layer),
    Layer.provideMerge(layerRunners(written)),
    Layer.provide(RpcServer.layerProtocolSocketServer),
    Layer.provide([layerSocketServer(resolved.secret), clientProtocol, health]),
    Layer.provide(Storage.layer),
    Layer.provide(shardingConfig(resolved, true)),
    Layer.provide(RpcSerialization.layerMsgPack)
  )
}

const clientSharding = (resolved: ClusterOptions.ResolvedClusterOptions) => {
  const written: Written = new Set()
  // SocketRunner.layerClientOnly, with the same `Runners` as a runner.
  return Sharding.layer.pipe(
    Layer.provideMerge(layerRunners(written)),
    Layer.provide(RunnerHealth.layerNoop),
    Layer.provide(layerClientProtocol(resolved.secret, written)),
    Layer.provide(Storage.layer),
    Layer.provide(shardingConfig(resolved, false)),
    Layer.provide(RpcSerialization.layerMsgPack)
  )
}

/** The local pool as the entities see it, with each named pool's affinity. */
const localPool = (options: ClusterOptions.ClusterOptions) =>
  Layer.effect(
    LocalPool,
    Effect.gen(function* () {
      const service = yield* Snakepit
      const resolved = yield* Diagnostics.resolveOptions(options.pool ?? {})
      const affinities = new Map<string, Affinity>(resolved.map((p) => [p.name, p.affinity]))
      const first = resolved[0]?.affinity ?? "hint"
      return LocalPool.of({ service, affinity: (pool) => (pool === null ? first : (affinities.get(pool) ?? first)) })
    })
  ).pipe(Layer.provide(SnakepitPool.layer(options.pool ?? {})))

/**
 * This process as a runner: starts its local pool (`options.pool`), joins the cluster on
 * `host:port`, serves the sessions and session-less calls whose shards it owns, and provides
 * `Snakepit` (calls go to whichever runner owns them) and `SnakepitCluster`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: ClusterOptions.ClusterOptions = {}
): Layer.Layer<
  Snakepit | SnakepitCluster,
  PoolStartError | ConfigError | SocketServer.SocketServerError,
  SqlClient.SqlClient
> =>
  Layer.unwrapEffect(
    Effect.gen(function* () {
      const resolved = yield* ClusterOptions.resolve(options)
      const poolOptions = yield* Diagnostics.resolveOptions(options.pool ?? {})
      const pools = poolOptions.map((p) => p.name)
      const callTimeout = resolved.callTimeout ?? poolOptions[0]?.callTimeout ?? CLIENT_CALL_TIMEOUT
      const identity = { instance: randomUUID(), address: `${resolved.host}:${resolved.port}` }
      const runner = Layer.mergeAll(
        layerEntities({ maxIdleTime: resolved.entityMaxIdleTime }),
        layerPublisher({ interval: resolved.publishInterval, shards: resolved.shards })
      )
      const services = Layer.effectContext(
        Effect.gen(function* () {
          const local = yield* LocalPool
          const { runners, service } = yield* Client.make({ resolved, callTimeout, pools, local })
          return Context.make(Snakepit, service).pipe(
            Context.add(SnakepitCluster, {
              runners,
              self: Option.some(identity),
              failoverBound: ClusterOptions.failoverBound(resolved),
              options: resolved
            })
          )
        })
      )
      return Layer.merge(services, runner).pipe(
        Layer.provide(Layer.succeed(RunnerIdentity, identity)),
        Layer.provide(localPool(options)),
        Layer.provide(runnerSharding(resolved)),
        Layer.provideMerge(Directory.layer)
      )
    })
  ).pipe(Layer.map(Context.pick(Snakepit, SnakepitCluster)))

/**
 * A cluster member without a pool: its `Snakepit` service sends every call to the runners.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerClient = (
  options: ClusterOptions.ClusterOptions = {}
): Layer.Layer<Snakepit | SnakepitCluster, ConfigError, SqlClient.SqlClient> =>
  Layer.unwrapEffect(
    Effect.gen(function* () {
      const resolved = yield* ClusterOptions.resolve(options)
      const pools = options.pools ?? ["default"]
      return Layer.effectContext(
        Effect.gen(function* () {
          const { runners, service } = yield* Client.make({
            resolved,
            callTimeout: resolved.callTimeout ?? CLIENT_CALL_TIMEOUT,
            pools,
            local: undefined
          })
          return Context.make(Snakepit, service).pipe(
            Context.add(SnakepitCluster, {
              runners,
              self: Option.none(),
              failoverBound: ClusterOptions.failoverBound(resolved),
              options: resolved
            })
          )
        })
      ).pipe(Layer.provide(clientSharding(resolved)), Layer.provide(Directory.layer))
    })
  )

/**
 * The cluster's storage on one machine: a SQLite file shared by every runner process there
 * (`filename`, else `SNAKEPIT_CLUSTER_SQLITE`).
 *
 * @since 0.1.0
 * @category storage
 */
export const sqlite = (filename?: string): Layer.Layer<SqlClient.SqlClient, ConfigError> =>
  Layer.unwrapEffect(
    Effect.gen(function* () {
      const file =
        filename ??
        (yield* Config.string("SNAKEPIT_CLUSTER_SQLITE").pipe(
          Effect.mapError(
            () =>
              new ConfigError({
                key: "SNAKEPIT_CLUSTER_SQLITE",
                value: "(unset)",
                reason: "the cluster's SQLite storage needs a file shared by every runner on this machine"
              })
          )
        ))
      return SqliteClient.layer({ filename: file }).pipe(
        Layer.mapError((e) => new ConfigError({ key: "SNAKEPIT_CLUSTER_SQLITE", value: file, reason: e.message }))
      )
    })
  )
