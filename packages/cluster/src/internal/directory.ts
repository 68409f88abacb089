/**
 * What runners tell each other through the cluster's SQL storage, beside @effect/cluster's own
 * tables: which runner instance last held each session (so a session re-created elsewhere
 * knows it moved), and each runner's pools, workers and routing key (for `stats`, `workers`
 * and worker operations). Plain portable SQL: the same statements run on SQLite and PostgreSQL.
 */
import { SqlClient } from "@effect/sql"
import type { PoolStats, WorkerInfo } from "@snakepit/core"
import { Clock, Context, Effect, Layer } from "effect"

/** A runner as it last published itself. */
export interface RunnerRecord {
  readonly instance: string
  readonly address: string
  readonly pid: number
  readonly hostname: string
  readonly startedAt: number
  readonly heartbeatAt: number
  /** An entity id of `snakepit/Runner` whose shard this runner held when it published. */
  readonly routeKey: string | null
  /** Shards this runner held when it published. */
  readonly shards: number
  readonly pools: ReadonlyArray<PublishedPool>
}

/** One pool of a runner, as published. */
export interface PublishedPool {
  readonly stats: PoolStats
  readonly workers: ReadonlyArray<Omit<WorkerInfo, "startedAt"> & { readonly startedAt: number }>
}

/** Where the session lived before this runner took it, when it was another runner instance. */
export interface PreviousHolder {
  readonly instance: string
  readonly address: string
}

/** The directory's operations. */
export class Directory extends Context.Tag("@snakepit/cluster/Directory")<
  Directory,
  {
    /** Records this runner as the session's holder; returns the previous holder when it was another instance. */
    readonly claimSession: (session: string, self: PreviousHolder) => Effect.Effect<PreviousHolder | undefined, never>
    readonly publish: (record: RunnerRecord) => Effect.Effect<void>
    readonly withdraw: (instance: string) => Effect.Effect<void>
    /** Runners that published within `freshMs`. */
    readonly runners: (freshMs: number) => Effect.Effect<ReadonlyArray<RunnerRecord>>
  }
>() {}

const SESSIONS = "snakepit_cluster_sessions"
const DIRECTORY = "snakepit_cluster_directory"

/**
 * The directory on the cluster's `SqlClient`. Storage faults here are defects: the cluster
 * cannot work without its storage, and @effect/cluster treats them the same way.
 */
export const layer: Layer.Layer<Directory, never, SqlClient.SqlClient> = Layer.effect(
  Directory,
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql.unsafe(
      `CREATE TABLE IF NOT EXISTS ${SESSIONS} (
        session_id VARCHAR(1024) PRIMARY KEY,
        runner_instance VARCHAR(64) NOT NULL,
        runner_address VARCHAR(255) NOT NULL,
        claimed_at BIGINT NOT NULL
      )`
    )
    yield* sql.unsafe(
      `CREATE TABLE IF NOT EXISTS ${DIRECTORY} (
        instance VARCHAR(64) PRIMARY KEY,
        address VARCHAR(255) NOT NULL,
        pid INTEGER NOT NULL,
        hostname VARCHAR(255) NOT NULL,
        started_at BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL,
        route_key VARCHAR(255),
        shards INTEGER NOT NULL,
        pools TEXT NOT NULL
      )`
    )

    return Directory.of({
      claimSession: (session, self) =>
        Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis
          const rows = yield* sql<{ runner_instance: string; runner_address: string }>`
            SELECT runner_instance, runner_address FROM ${sql(SESSIONS)} WHERE session_id = ${session}`
          const previous = rows[0]
          if (previous?.runner_instance === self.instance) return undefined
          yield* sql`
            INSERT INTO ${sql(SESSIONS)} (session_id, runner_instance, runner_address, claimed_at)
            VALUES (${session}, ${self.instance}, ${self.address}, ${now})
            ON CONFLICT (session_id) DO UPDATE SET
              runner_instance = excluded.runner_instance,
              runner_address = excluded.runner_address,
              claimed_at = excluded.claimed_at`
          return previous === undefined
            ? undefined
            : { instance: previous.runner_instance, address: previous.runner_address }
        }).pipe(Effect.orDie),
      publish: (r) =>
        sql`
          INSERT INTO ${sql(DIRECTORY)} (instance, address, pid, hostname, started_at, heartbeat_at, route_key, shards, pools)
          VALUES (${r.instance}, ${r.address}, ${r.pid}, ${r.hostname}, ${r.startedAt}, ${r.heartbeatAt}, ${r.routeKey}, ${r.shards}, ${JSON.stringify(r.pools)})
          ON CONFLICT (instance) DO UPDATE SET
            heartbeat_at = excluded.heartbeat_at,
            route_key = excluded.route_key,
            shards = excluded.shards,
            pools = excluded.pools`.pipe(Effect.asVoid, Effect.orDie),
      withdraw: (instance) =>
        sql`DELETE FROM ${sql(DIRECTORY)} WHERE instance = ${instance}`.pipe(Effect.asVoid, Effect.orDie),
      runners: (freshMs) =>
        Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis
          const rows = yield* sql<{
            instance: string
            address: string
            pid: number | string
            hostname: string
            started_at: number | string
            heartbeat_at: number | string
            route_key: string | null
            shards: number | string
            pools: string
          }>`SELECT * FROM ${sql(DIRECTORY)} WHERE heartbeat_at > ${now - freshMs} ORDER BY address`
          return rows.map(
            (row): RunnerRecord => ({
              instance: row.instance,
              address: row.address,
              // PostgreSQL returns BIGINT as text.
              pid: Number(row.pid),
              hostname: row.hostname,
              startedAt: Number(row.started_at),
              heartbeatAt: Number(row.heartbeat_at),
              routeKey: row.route_key,
              shards: Number(row.shards),
              pools: JSON.parse(row.pools) as ReadonlyArray<PublishedPool>
            })
          )
        }).pipe(Effect.orDie)
    })
  }).pipe(Effect.orDie)
)
