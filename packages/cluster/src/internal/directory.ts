/**
 * What runners tell each other through the cluster's SQL storage, beside @effect/cluster's own
 * tables: which runner instance last held each session (so a session re-created elsewhere
 * knows it moved); each runner's pool reports and routing key (for `stats`, `workers`,
 * `report` and worker operations); control commands addressed to a runner (`resize`, `drain`);
 * and the runners' recent pool events (for `events`). Plain portable SQL: the same statements
 * run on SQLite and PostgreSQL.
 */
import { randomUUID } from "node:crypto"
import { SqlClient } from "@effect/sql"
import { PoolEvent, PoolReport } from "@snakepit/core"
import { Clock, Context, Effect, Layer, Schema } from "effect"
import * as Storage from "./storage.js"

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
  /** Its pools' reports, worker ids as the cluster shows them (`host:port/id`). */
  readonly pools: ReadonlyArray<PoolReport>
}

/** An operator's command to one runner, applied at its next publish. */
export type ControlCommand =
  | { readonly kind: "resize"; readonly pool: string; readonly min: number; readonly max: number }
  | { readonly kind: "drain"; readonly pool: string }

/** One event of a runner's pools, numbered per runner instance. */
export interface StoredEvent {
  readonly instance: string
  readonly seq: number
  readonly event: PoolEvent
}

/** How long a runner keeps its events in the directory for subscribers to read. */
export const EVENT_RETENTION_MS = 60_000

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
    /** Queues `command` for runner `instance`. */
    readonly command: (instance: string, command: ControlCommand) => Effect.Effect<void>
    /** The commands queued for `instance`, oldest first, removed from the queue. */
    readonly takeCommands: (instance: string) => Effect.Effect<ReadonlyArray<ControlCommand>>
    /** Stores `instance`'s events and drops its events older than the retention. */
    readonly appendEvents: (
      instance: string,
      events: ReadonlyArray<{ readonly seq: number; readonly event: PoolEvent }>,
      now: number
    ) => Effect.Effect<void>
    /** Every stored event, in order per runner instance. */
    readonly events: Effect.Effect<ReadonlyArray<StoredEvent>>
  }
>() {}

const SESSIONS = "snakepit_cluster_sessions"
const DIRECTORY = "snakepit_cluster_directory"
const COMMANDS = "snakepit_cluster_commands"
const EVENTS = "snakepit_cluster_events"

const Reports = Schema.parseJson(Schema.Array(PoolReport))
const encodeReports = Schema.encodeSync(Reports)
const decodeReports = Schema.decodeUnknownSync(Reports)
const encodeEvent = Schema.encodeSync(Schema.parseJson(PoolEvent))
const decodeEvent = Schema.decodeUnknownSync(Schema.parseJson(PoolEvent))

/**
 * The directory on the cluster's `SqlClient`. Storage faults here are defects: the cluster
 * cannot work without its storage, and @effect/cluster treats them the same way.
 */
export const layer: Layer.Layer<Directory, never, SqlClient.SqlClient> = Layer.effect(
  Directory,
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* Storage.createSchema(
      Effect.all([
        sql.unsafe(
          `CREATE TABLE IF NOT EXISTS ${SESSIONS} (
            session_id VARCHAR(1024) PRIMARY KEY,
            runner_instance VARCHAR(64) NOT NULL,
            runner_address VARCHAR(255) NOT NULL,
            claimed_at BIGINT NOT NULL
          )`
        ),
        sql.unsafe(
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
        ),
        sql.unsafe(
          `CREATE TABLE IF NOT EXISTS ${COMMANDS} (
            id VARCHAR(64) PRIMARY KEY,
            instance VARCHAR(64) NOT NULL,
            issued_at BIGINT NOT NULL,
            kind VARCHAR(16) NOT NULL,
            pool VARCHAR(255) NOT NULL,
            size_min INTEGER,
            size_max INTEGER
          )`
        ),
        sql.unsafe(
          `CREATE TABLE IF NOT EXISTS ${EVENTS} (
            instance VARCHAR(64) NOT NULL,
            seq BIGINT NOT NULL,
            written_at BIGINT NOT NULL,
            event TEXT NOT NULL,
            PRIMARY KEY (instance, seq)
          )`
        )
      ])
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
          VALUES (${r.instance}, ${r.address}, ${r.pid}, ${r.hostname}, ${r.startedAt}, ${r.heartbeatAt}, ${r.routeKey}, ${r.shards}, ${encodeReports(r.pools)})
          ON CONFLICT (instance) DO UPDATE SET
            heartbeat_at = excluded.heartbeat_at,
            route_key = excluded.route_key,
            shards = excluded.shards,
            pools = excluded.pools`.pipe(Effect.asVoid, Effect.orDie),
      withdraw: (instance) =>
        Effect.all([
          sql`DELETE FROM ${sql(DIRECTORY)} WHERE instance = ${instance}`,
          sql`DELETE FROM ${sql(COMMANDS)} WHERE instance = ${instance}`,
          sql`DELETE FROM ${sql(EVENTS)} WHERE instance = ${instance}`
        ]).pipe(Effect.asVoid, Effect.orDie),
      command: (instance, command) =>
        Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis
          const [min, max] = command.kind === "resize" ? [command.min, command.max] : [null, null]
          yield* sql`
            INSERT INTO ${sql(COMMANDS)} (id, instance, issued_at, kind, pool, size_min, size_max)
            VALUES (${randomUUID()}, ${instance}, ${now}, ${command.kind}, ${command.pool}, ${min}, ${max})`
        }).pipe(Effect.asVoid, Effect.orDie),
      takeCommands: (instance) =>
        Effect.gen(function* () {
          const rows = yield* sql<{
            id: string
            kind: string
            pool: string
            size_min: number | string | null
            size_max: number | string | null
          }>`SELECT id, kind, pool, size_min, size_max FROM ${sql(COMMANDS)} WHERE instance = ${instance} ORDER BY issued_at, id`
          if (rows.length === 0) return []
          yield* sql`DELETE FROM ${sql(COMMANDS)} WHERE ${sql.in(
            "id",
            rows.map((row) => row.id)
          )}`
          return rows.map(
            (row): ControlCommand =>
              row.kind === "resize"
                ? { kind: "resize", pool: row.pool, min: Number(row.size_min), max: Number(row.size_max) }
                : { kind: "drain", pool: row.pool }
          )
        }).pipe(Effect.orDie),
      appendEvents: (instance, events, now) =>
        Effect.gen(function* () {
          if (events.length > 0) {
            yield* sql`INSERT INTO ${sql(EVENTS)} ${sql.insert(
              events.map(({ event, seq }) => ({ instance, seq, written_at: now, event: encodeEvent(event) }))
            )}`
          }
          yield* sql`DELETE FROM ${sql(EVENTS)} WHERE instance = ${instance} AND written_at < ${now - EVENT_RETENTION_MS}`
        }).pipe(Effect.orDie),
      events: sql<{ instance: string; seq: number | string; event: string }>`
        SELECT instance, seq, event FROM ${sql(EVENTS)} ORDER BY written_at, instance, seq`.pipe(
        Effect.map((rows) =>
          rows.map(
            (row): StoredEvent => ({ instance: row.instance, seq: Number(row.seq), event: decodeEvent(row.event) })
          )
        ),
        Effect.orDie
      ),
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
              pools: decodeReports(row.pools)
            })
          )
        }).pipe(Effect.orDie)
    })
  }).pipe(Effect.orDie)
)
