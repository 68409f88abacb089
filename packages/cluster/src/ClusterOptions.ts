/**
 * Options of a cluster member: where it listens, the shared secret, the timings of failover,
 * and (on a runner) its local pool. Each resolves from code, else `SNAKEPIT_CLUSTER_*`
 * environment variables through Effect `Config`, else a default.
 *
 * @since 0.1.0
 */
import { ConfigError, type SnakepitOptions } from "@snakepit/core"
import { Config, Duration, Effect, Option, Redacted } from "effect"

/**
 * How calls without a session are placed.
 *
 * @since 0.1.0
 * @category models
 */
export type SessionlessPlacement = "spread" | "local"

/**
 * Options of `SnakepitCluster.layer` (a runner) and `SnakepitCluster.layerClient`.
 *
 * @since 0.1.0
 * @category models
 */
export interface ClusterOptions {
  /** The host other members reach this runner at. Default `127.0.0.1` (env `SNAKEPIT_CLUSTER_HOST`). */
  readonly host?: string
  /** The runner's port. Default 34431 (env `SNAKEPIT_CLUSTER_PORT`). */
  readonly port?: number
  /** The interface to listen on, when it differs from `host` (e.g. `0.0.0.0`). Env `SNAKEPIT_CLUSTER_LISTEN_HOST`. */
  readonly listenHost?: string
  /**
   * The secret every member shares, at least 16 characters: runners accept only connections
   * that prove it (TLS 1.2 with a pre-shared key, which also encrypts). Env `SNAKEPIT_CLUSTER_SECRET`; required.
   */
  readonly secret?: string | Redacted.Redacted<string>
  /** SQLite file of the cluster's storage (one machine). Env `SNAKEPIT_CLUSTER_SQLITE`. */
  readonly sqlite?: string
  /** Shards per group; the same on every member. Default 300 (env `SNAKEPIT_CLUSTER_SHARDS`). */
  readonly shards?: number
  /**
   * How long a dead runner's shard locks hold before another runner may take its shards: the
   * main term of the failover bound. Default 10 s (env `SNAKEPIT_CLUSTER_LOCK_EXPIRATION`).
   */
  readonly lockExpiration?: Duration.DurationInput
  /**
   * PostgreSQL only: hold shard locks as advisory locks (released when a runner's connection
   * drops) instead of rows that expire after `lockExpiration`. A machine that vanishes without
   * closing its connection keeps advisory locks until the server's TCP keepalive gives up, so
   * the default (false) keeps the failover bound. Env `SNAKEPIT_CLUSTER_ADVISORY_LOCKS`.
   */
  readonly advisoryLocks?: boolean
  /** How often runners ping each other to mark dead ones. Default 2 s (env `SNAKEPIT_CLUSTER_HEALTH_INTERVAL`). */
  readonly healthCheckInterval?: Duration.DurationInput
  /** How often every member re-reads the runners and shard assignments. Default 1 s (env `SNAKEPIT_CLUSTER_REFRESH_INTERVAL`). */
  readonly refreshInterval?: Duration.DurationInput
  /**
   * The longest a call waits for a runner to take it (its shard moving, or none alive) on top of
   * its own timeout; then `RunnerUnreachable`. Default 60 s (env `SNAKEPIT_CLUSTER_DELIVERY_TIMEOUT`).
   */
  readonly deliveryTimeout?: Duration.DurationInput
  /**
   * The timeout of calls that give none; it travels with the call and the serving runner's pool
   * applies it. Default: on a runner, its pool's `callTimeout`; on a client, 60 s (the pool's
   * default). Env `SNAKEPIT_CLUSTER_CALL_TIMEOUT`.
   */
  readonly callTimeout?: Duration.DurationInput
  /** How often a runner publishes its pools' stats and workers to the others. Default 1 s. */
  readonly publishInterval?: Duration.DurationInput
  /** An idle session entity is passivated after this long (its worker keeps the state). Default 60 s. */
  readonly entityMaxIdleTime?: Duration.DurationInput
  /** How long a stopping runner lets running calls finish. Default 15 s. */
  readonly entityTerminationTimeout?: Duration.DurationInput
  /** This runner's share of shards relative to the others. Default 1 (env `SNAKEPIT_CLUSTER_WEIGHT`). */
  readonly weight?: number
  /**
   * Calls without a session: `"spread"` (default) over every runner, shard by shard in turn;
   * `"local"` on this runner's own pool (a runner only; a client spreads).
   */
  readonly sessionless?: SessionlessPlacement
  /** A runner's local pool: the options of `SnakepitPool.layer`. */
  readonly pool?: SnakepitOptions
  /** Names of the pools the runners serve, for a client (a runner takes them from `pool`). Default `["default"]`. */
  readonly pools?: ReadonlyArray<string>
}

/**
 * Every option decided.
 *
 * @since 0.1.0
 * @category models
 */
export interface ResolvedClusterOptions {
  readonly host: string
  readonly port: number
  readonly listenHost: string
  readonly secret: Redacted.Redacted<string>
  readonly sqlite: string | undefined
  readonly shards: number
  readonly lockExpiration: Duration.Duration
  readonly advisoryLocks: boolean
  readonly healthCheckInterval: Duration.Duration
  readonly refreshInterval: Duration.Duration
  readonly deliveryTimeout: Duration.Duration
  readonly callTimeout: Duration.Duration | undefined
  readonly publishInterval: Duration.Duration
  readonly entityMaxIdleTime: Duration.Duration
  readonly entityTerminationTimeout: Duration.Duration
  readonly weight: number
  readonly sessionless: SessionlessPlacement
}

const env = <A>(name: string, config: Config.Config<A>) =>
  config.pipe(
    Config.option,
    Effect.mapError(
      (e) =>
        new ConfigError({ key: name, value: "(unreadable)", reason: `cannot be read: ${String(e).split("\n")[0]}` })
    )
  )

/** Code, else the environment variable (validated), else the default; errors name the key. */
const pick = <A>(
  key: string,
  envName: string,
  code: A | undefined,
  config: (name: string) => Config.Config<A>,
  fallback: A | undefined,
  check?: (value: A) => string | undefined
): Effect.Effect<A | undefined, ConfigError> =>
  Effect.gen(function* () {
    const fromEnv = code === undefined ? yield* env(envName, config(envName)) : Option.none()
    const value = code !== undefined ? code : Option.getOrElse(fromEnv, () => fallback)
    const problem = value === undefined || check === undefined ? undefined : check(value)
    if (problem !== undefined) {
      const where = code !== undefined ? key : envName
      return yield* new ConfigError({ key: where, value: String(value), reason: problem })
    }
    return value
  })

const positiveDuration = (d: Duration.Duration) => (Duration.greaterThan(d, Duration.zero) ? undefined : "must be > 0")
const port = (n: number) => (Number.isInteger(n) && n > 0 && n < 65536 ? undefined : "expected a port 1-65535")
const positiveInt = (n: number) => (Number.isInteger(n) && n > 0 ? undefined : "expected a positive integer")

const duration = (
  key: string,
  envName: string,
  code: Duration.DurationInput | undefined,
  fallback: Duration.Duration
) =>
  pick(
    key,
    envName,
    code === undefined ? undefined : Duration.decode(code),
    Config.duration,
    fallback,
    positiveDuration
  )

/**
 * Resolves options: code over `SNAKEPIT_CLUSTER_*` over defaults. A bad or missing value is
 * the `ConfigError` naming it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const resolve = (options: ClusterOptions = {}): Effect.Effect<ResolvedClusterOptions, ConfigError> =>
  Effect.gen(function* () {
    const host = (yield* pick("host", "SNAKEPIT_CLUSTER_HOST", options.host, Config.string, "127.0.0.1"))!
    const secret = yield* pick<Redacted.Redacted<string>>(
      "secret",
      "SNAKEPIT_CLUSTER_SECRET",
      options.secret === undefined
        ? undefined
        : typeof options.secret === "string"
          ? Redacted.make(options.secret)
          : options.secret,
      (name) => Config.redacted(name),
      undefined,
      (s) => (Redacted.value(s).length >= 16 ? undefined : "the cluster secret needs at least 16 characters")
    )
    if (secret === undefined) {
      return yield* new ConfigError({
        key: "SNAKEPIT_CLUSTER_SECRET",
        value: "(unset)",
        reason: "every cluster member needs the shared secret (option `secret`), at least 16 characters"
      })
    }
    return {
      host,
      port: (yield* pick("port", "SNAKEPIT_CLUSTER_PORT", options.port, Config.integer, 34431, port))!,
      listenHost: (yield* pick("listenHost", "SNAKEPIT_CLUSTER_LISTEN_HOST", options.listenHost, Config.string, host))!,
      secret,
      sqlite: yield* pick("sqlite", "SNAKEPIT_CLUSTER_SQLITE", options.sqlite, Config.string, undefined),
      shards: (yield* pick("shards", "SNAKEPIT_CLUSTER_SHARDS", options.shards, Config.integer, 300, positiveInt))!,
      lockExpiration: (yield* duration(
        "lockExpiration",
        "SNAKEPIT_CLUSTER_LOCK_EXPIRATION",
        options.lockExpiration,
        Duration.seconds(10)
      ))!,
      advisoryLocks: (yield* pick(
        "advisoryLocks",
        "SNAKEPIT_CLUSTER_ADVISORY_LOCKS",
        options.advisoryLocks,
        Config.boolean,
        false
      ))!,
      healthCheckInterval: (yield* duration(
        "healthCheckInterval",
        "SNAKEPIT_CLUSTER_HEALTH_INTERVAL",
        options.healthCheckInterval,
        Duration.seconds(2)
      ))!,
      refreshInterval: (yield* duration(
        "refreshInterval",
        "SNAKEPIT_CLUSTER_REFRESH_INTERVAL",
        options.refreshInterval,
        Duration.seconds(1)
      ))!,
      deliveryTimeout: (yield* duration(
        "deliveryTimeout",
        "SNAKEPIT_CLUSTER_DELIVERY_TIMEOUT",
        options.deliveryTimeout,
        Duration.seconds(60)
      ))!,
      callTimeout: yield* pick(
        "callTimeout",
        "SNAKEPIT_CLUSTER_CALL_TIMEOUT",
        options.callTimeout === undefined ? undefined : Duration.decode(options.callTimeout),
        Config.duration,
        undefined,
        positiveDuration
      ),
      publishInterval: (yield* duration(
        "publishInterval",
        "SNAKEPIT_CLUSTER_PUBLISH_INTERVAL",
        options.publishInterval,
        Duration.seconds(1)
      ))!,
      entityMaxIdleTime: (yield* duration(
        "entityMaxIdleTime",
        "SNAKEPIT_CLUSTER_ENTITY_MAX_IDLE",
        options.entityMaxIdleTime,
        Duration.seconds(60)
      ))!,
      entityTerminationTimeout: (yield* duration(
        "entityTerminationTimeout",
        "SNAKEPIT_CLUSTER_TERMINATION_TIMEOUT",
        options.entityTerminationTimeout,
        Duration.seconds(15)
      ))!,
      weight: (yield* pick("weight", "SNAKEPIT_CLUSTER_WEIGHT", options.weight, Config.integer, 1, positiveInt))!,
      sessionless: (yield* pick(
        "sessionless",
        "SNAKEPIT_CLUSTER_SESSIONLESS",
        options.sessionless,
        (name) => Config.literal("spread", "local")(name),
        "spread"
      ))!
    }
  })

/**
 * The bound, documented and tested, within which a dead runner's sessions are served again
 * elsewhere: its locks expire, the others notice on their next refresh and acquisition round.
 *
 * @since 0.1.0
 * @category failover
 */
export const failoverBound = (options: ResolvedClusterOptions): Duration.Duration =>
  Duration.sum(
    Duration.sum(options.lockExpiration, Duration.times(options.refreshInterval, 2)),
    Duration.sum(options.healthCheckInterval, Duration.seconds(3))
  )
