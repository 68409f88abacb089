/**
 * The cluster's SQL storage: the tables @effect/cluster keeps runners and shard locks in, and
 * how a runner creates its schema next to others doing the same.
 */
import { MessageStorage, SqlRunnerStorage } from "@effect/cluster"
import type { SqlError } from "@effect/sql/SqlError"
import { Effect, Layer, Schedule } from "effect"

/**
 * Runners started together on a fresh PostgreSQL database race to create the same tables, and
 * `CREATE TABLE IF NOT EXISTS` is not atomic there: the loser fails with `type "…" already
 * exists` (a unique violation on `pg_type`). Its retry finds the tables made. Bounded: a
 * schema that cannot be created at all still fails the runner's start, within about 3 s.
 */
const creatingSchema = Schedule.exponential("50 millis").pipe(Schedule.jittered, Schedule.intersect(Schedule.recurs(6)))

/** Runs `create` (idempotent DDL), retried while another runner may be creating the same. */
export const createSchema = <A, R>(create: Effect.Effect<A, SqlError, R>): Effect.Effect<A, SqlError, R> =>
  Effect.retry(create, creatingSchema)

/**
 * Calls are volatile (at most once, like a call on a local pool): nothing is replayed on
 * another runner after a crash, so no message storage. Runners and shard locks live in SQL.
 */
export const layer = Layer.mergeAll(
  MessageStorage.layerNoop,
  SqlRunnerStorage.layerWith({ prefix: "snakepit_cluster" }).pipe(Layer.retry(creatingSchema), Layer.orDie)
)
