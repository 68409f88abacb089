/**
 * Option resolution for the pool: code options over `SNAKEPIT_*` environment variables over
 * defaults, merged per named pool and validated into {@link ResolvedPoolOptions}.
 *
 * Defaults (what a pool runs with when neither code nor environment says otherwise):
 *
 * | option            | default                                   | environment                     |
 * | ----------------- | ----------------------------------------- | ------------------------------- |
 * | size              | 2 (or `{ min, max }`: elastic)            | SNAKEPIT_SIZE (`4` or `2..8`)   |
 * | scaleUpAfter      | 1 second                                  | SNAKEPIT_SCALE_UP_AFTER         |
 * | idleTimeout       | 5 minutes                                 | SNAKEPIT_IDLE_TIMEOUT           |
 * | minReady          | = size (its min)                          | SNAKEPIT_MIN_READY              |
 * | capacity          | 1                                         | SNAKEPIT_CAPACITY               |
 * | adapter           | `DEFAULT_ADAPTER` (the showcase adapter)  | SNAKEPIT_ADAPTER                |
 * | python            | undefined (the worker searches)           | SNAKEPIT_PYTHON                 |
 * | pythonPath        | []                                        | SNAKEPIT_PYTHON_PATH (`:` list) |
 * | env               | {}                                        |                                 |
 * | threadLimits      | every library 1                           | SNAKEPIT_THREAD_LIMITS          |
 * | startupBatchSize  | 8                                         | SNAKEPIT_STARTUP_BATCH_SIZE     |
 * | startupBatchDelay | 0                                         | SNAKEPIT_STARTUP_BATCH_DELAY    |
 * | startupTimeout    | 30 seconds                                | SNAKEPIT_STARTUP_TIMEOUT        |
 * | callTimeout       | 60 seconds (may be infinite)              | SNAKEPIT_CALL_TIMEOUT           |
 * | gracefulTimeout   | 2 seconds                                 |                                 |
 * | queue             | max 1000, timeout 30 seconds              | SNAKEPIT_QUEUE_MAX, _TIMEOUT    |
 * | affinity          | "strict_queue"                            | SNAKEPIT_AFFINITY               |
 * | sessions          | ttl 30 minutes, max 10 000                | SNAKEPIT_SESSION_TTL, _MAX      |
 * | recycle           | maxCalls, ttl, maxRssMb all undefined     | SNAKEPIT_RECYCLE_MAX_CALLS, ... |
 * | healthCheck       | interval 10 s, timeout 5 s, maxMisses 3   | SNAKEPIT_HEALTH_INTERVAL        |
 * | restart           | baseDelay 100 ms, maxDelay 10 s,          |                                 |
 * |                   | maxRestarts 5, window 60 s, cooldown 30 s |                                 |
 * | drainTimeout      | 30 seconds                                |                                 |
 * | cancelGrace       | 5 seconds                                 | SNAKEPIT_CANCEL_GRACE           |
 * | maxMessageBytes   | 64 MiB                                    | SNAKEPIT_MAX_MESSAGE_BYTES      |
 * | validateArguments | false                                     | SNAKEPIT_VALIDATE_ARGUMENTS     |
 * | transport         | "local"                                   | SNAKEPIT_TRANSPORT              |
 * | grpc.listen       | "loopback"                                | SNAKEPIT_GRPC_LISTEN            |
 * | dataDir           | undefined (a per-user directory)          | SNAKEPIT_DATA_DIR               |
 * | control           | true (the control socket; layer-wide)     | SNAKEPIT_CONTROL                |
 *
 * Durations from the environment are Effect duration strings ("30 seconds", "500 millis"),
 * a bare number of milliseconds ("1500"), or "infinity" where an infinite value is allowed.
 *
 * @since 0.1.0
 */
import { delimiter } from "node:path"
import { Config, Duration, Effect, Either, Option } from "effect"
import { ConfigError } from "../errors.js"
import type { Affinity, PoolOptions, PoolSize, ResolvedPoolOptions, SnakepitOptions } from "../PoolOptions.js"
import * as ThreadLimits from "../ThreadLimits.js"
import { DEFAULT_ADAPTER, DEFAULT_MAX_MESSAGE_BYTES } from "../Worker.js"
import type { Transport } from "../WorkerFactory.js"

const DEFAULTS = {
  size: 2,
  scaleUpAfter: Duration.seconds(1),
  idleTimeout: Duration.minutes(5),
  capacity: 1,
  adapter: DEFAULT_ADAPTER,
  pythonPath: [] as ReadonlyArray<string>,
  env: {} as Readonly<Record<string, string>>,
  startupBatchSize: 8,
  startupBatchDelay: Duration.zero,
  startupTimeout: Duration.seconds(30),
  callTimeout: Duration.seconds(60),
  gracefulTimeout: Duration.seconds(2),
  queue: { max: 1000, timeout: Duration.seconds(30) },
  affinity: "strict_queue" as Affinity,
  sessions: { ttl: Duration.minutes(30), max: 10_000 },
  healthCheck: { interval: Duration.seconds(10), timeout: Duration.seconds(5), maxMisses: 3 },
  restart: {
    baseDelay: Duration.millis(100),
    maxDelay: Duration.seconds(10),
    maxRestarts: 5,
    window: Duration.seconds(60),
    cooldown: Duration.seconds(30)
  },
  drainTimeout: Duration.seconds(30),
  cancelGrace: Duration.seconds(5),
  maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
  validateArguments: false,
  transport: "local" as Transport,
  grpc: { listen: "loopback" as "loopback" | "unix" }
} as const

/** A pool's size bounds; a fixed size has `min === max`. */
export interface PoolSizeBounds {
  readonly min: number
  readonly max: number
}

const toPoolSize = (bounds: PoolSizeBounds): PoolSize => (bounds.min === bounds.max ? bounds.min : bounds)

const AFFINITIES: ReadonlyArray<Affinity> = ["hint", "strict_queue", "strict_fail_fast"]
const TRANSPORTS: ReadonlyArray<Transport> = ["local", "grpc"]
const LISTENS: ReadonlyArray<"loopback" | "unix"> = ["loopback", "unix"]
const ADAPTER_PATTERN = /^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$/
const POOL_NAME_PATTERN = /^[A-Za-z0-9_-]+$/

// ---------------------------------------------------------------------------------------------
// Validators: one rule each, shared by code options and environment variables, so both sources
// accept exactly the same values. A validator returns the reason on failure; the caller adds
// the key and the rendered value.
// ---------------------------------------------------------------------------------------------

type Validator<A> = (value: unknown) => Either.Either<A, string>

const integerAtLeast =
  (min: number, expected: string): Validator<number> =>
  (value) =>
    typeof value === "number" && Number.isSafeInteger(value) && value >= min
      ? Either.right(value)
      : Either.left(expected)

const positiveInteger = integerAtLeast(1, "expected a positive integer")

const integerBetween =
  (min: number, max: number, expected: string): Validator<number> =>
  (value) =>
    typeof value === "number" && Number.isSafeInteger(value) && value >= min && value <= max
      ? Either.right(value)
      : Either.left(expected)

const SIZE_EXPECTED = "expected a positive integer, or { min, max } with positive integers and min <= max"

/** A fixed size `n` as `{ min: n, max: n }`; bounds with `min > max` or non-positive values are refused. */
const poolSize: Validator<PoolSizeBounds> = (value) => {
  if (typeof value === "number") {
    return Either.map(positiveInteger(value), (n) => ({ min: n, max: n }))
  }
  if (typeof value === "object" && value !== null && !Array.isArray(value)) {
    const { max, min } = value as { readonly min?: unknown; readonly max?: unknown }
    const valid = (n: unknown): n is number => typeof n === "number" && Number.isSafeInteger(n) && n >= 1
    if (!valid(min) || !valid(max)) return Either.left(SIZE_EXPECTED)
    if (min > max) return Either.left(`expected min (${min}) <= max (${max})`)
    return Either.right({ min, max })
  }
  return Either.left(SIZE_EXPECTED)
}

/** `4` or `2..8` from the environment. */
const toSizeInput = (raw: string): unknown => {
  const range = /^(\d+)\s*\.\.\s*(\d+)$/.exec(raw)
  return range ? { min: Number(range[1]), max: Number(range[2]) } : toNumber(raw)
}

const BOOLEANS: Readonly<Record<string, boolean>> = {
  true: true,
  false: false,
  "1": true,
  "0": false,
  on: true,
  off: false
}

const toBooleanInput = (raw: string): unknown => BOOLEANS[raw.toLowerCase()] ?? raw

const boolean: Validator<boolean> = (value) =>
  typeof value === "boolean" ? Either.right(value) : Either.left("expected true or false (or 1/0, on/off)")

const positiveNumber: Validator<number> = (value) =>
  typeof value === "number" && Number.isFinite(value) && value > 0
    ? Either.right(value)
    : Either.left("expected a positive number")

const affinity: Validator<Affinity> = (value) =>
  AFFINITIES.includes(value as Affinity)
    ? Either.right(value as Affinity)
    : Either.left(`expected one of ${AFFINITIES.join(", ")}`)

const oneOf =
  <A extends string>(choices: ReadonlyArray<A>): Validator<A> =>
  (value) =>
    choices.includes(value as A) ? Either.right(value as A) : Either.left(`expected one of ${choices.join(", ")}`)

const adapterName: Validator<string> = (value) =>
  typeof value === "string" && ADAPTER_PATTERN.test(value)
    ? Either.right(value)
    : Either.left("expected a Python module path, optionally with a class: 'package.module' or 'package.module:Class'")

// A NUL byte cannot cross `exec`: Node would throw while spawning, long after the options were
// accepted. It is refused here, where the option is named.
const NUL = "\u0000"

const nonEmptyString: Validator<string> = (value) =>
  typeof value !== "string" || value.length === 0
    ? Either.left("expected a non-empty string")
    : value.includes(NUL)
      ? Either.left("contains a NUL byte")
      : Either.right(value)

/** Directories for PYTHONPATH: each its own entry, so none may hold the path delimiter. */
const pathList: Validator<ReadonlyArray<string>> = (value) => {
  if (!Array.isArray(value) || !value.every((entry) => typeof entry === "string")) {
    return Either.left("expected an array of strings")
  }
  for (const [i, entry] of value.entries()) {
    if (entry.includes(NUL)) return Either.left(`entry ${i} contains a NUL byte`)
    if (entry.includes(delimiter)) {
      return Either.left(`entry ${i} contains the path delimiter "${delimiter}": give each directory as its own entry`)
    }
  }
  return Either.right(value)
}

/** Environment variables: names without `=` or NUL, values without NUL. */
const environment: Validator<Readonly<Record<string, string>>> = (value) => {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return Either.left("expected an object of string values")
  }
  for (const [key, entry] of Object.entries(value)) {
    if (entry === undefined) continue
    if (typeof entry !== "string") return Either.left(`the value of ${JSON.stringify(key)} is not a string`)
    if (key === "" || key.includes("=") || key.includes(NUL)) {
      return Either.left(`${JSON.stringify(key)} is not a variable name (empty, or contains "=" or a NUL byte)`)
    }
    if (entry.includes(NUL)) return Either.left(`the value of ${key} contains a NUL byte`)
  }
  return Either.right(value as Readonly<Record<string, string>>)
}

/** Unset stays unset (the fields whose default is `undefined`). */
const optional =
  <A>(validator: Validator<A>): Validator<A | undefined> =>
  (value) =>
    value === undefined ? Either.right(undefined) : validator(value)

/** Which durations an option accepts beyond "non-negative and valid". */
interface DurationRule {
  /** Timeouts and intervals must be > 0: a zero timeout fails everything at once. */
  readonly positive: boolean
  /** Only where infinity means "never" (no call timeout, sessions or workers that never expire). */
  readonly infinite: boolean
}

const TIMEOUT: DurationRule = { positive: true, infinite: false }
const UNBOUNDED_TIMEOUT: DurationRule = { positive: true, infinite: true }
const DELAY: DurationRule = { positive: false, infinite: false }
const LIFETIME: DurationRule = { positive: false, infinite: true }

const DURATION_EXPECTED = "expected a duration like '30 seconds' or '500 millis'"
const ENV_DURATION_EXPECTED = `${DURATION_EXPECTED}, or a number of milliseconds`

const isNotNumber = (value: unknown): boolean =>
  typeof value === "number"
    ? Number.isNaN(value)
    : Array.isArray(value) && value.some((part) => typeof part === "number" && Number.isNaN(part))

// `Duration.decode` clamps negative input to zero, so negativity is checked on the raw input.
const isNegativeInput = (value: unknown): boolean => {
  if (typeof value === "number") return value < 0
  if (typeof value === "bigint") return value < 0n
  if (typeof value === "string") return value.trimStart().startsWith("-")
  if (Array.isArray(value)) return value.some((part) => typeof part === "number" && part < 0)
  return false
}

const duration =
  (rule: DurationRule, expected: string = DURATION_EXPECTED): Validator<Duration.Duration> =>
  (value) => {
    // `decodeUnknown` returns None where `decode` would throw on an invalid input.
    const decoded = Duration.decodeUnknown(value)
    if (Option.isNone(decoded) || isNotNumber(value)) return Either.left(expected)
    if (isNegativeInput(value)) return Either.left("expected a non-negative duration")
    if (rule.positive && Duration.isZero(decoded.value)) return Either.left("expected a duration greater than zero")
    if (!rule.infinite && !Duration.isFinite(decoded.value)) return Either.left("expected a finite duration")
    return Either.right(decoded.value)
  }

const THREAD_LIMITS_EXPECTED = `expected comma-separated library=count pairs, e.g. 'openblas=4,omp=2', with libraries ${Object.keys(ThreadLimits.envNames).join(", ")} and positive integer counts`

/** `openblas=4,omp=2` into a partial that merges with the defaults like a code override. */
const threadLimitsList: Validator<Partial<ThreadLimits.ThreadLimits>> = (value) => {
  const limits: Record<string, number> = {}
  for (const entry of String(value).split(",")) {
    const trimmed = entry.trim()
    if (trimmed === "") continue
    const match = /^(\w+)\s*=\s*(\d+)$/.exec(trimmed)
    // `hasOwn`, not `in`: "toString=2" must not pass as a library.
    if (match === null || !Object.hasOwn(ThreadLimits.envNames, match[1]!) || Number(match[2]) < 1) {
      return Either.left(THREAD_LIMITS_EXPECTED)
    }
    limits[match[1]!] = Number(match[2])
  }
  return Either.right(limits)
}

/** The value as the error shows it: JSON for objects, so `{"max":-1}` reads as written. */
const render = (value: unknown): string => {
  if (Duration.isDuration(value)) return Duration.format(value)
  if (typeof value === "object" && value !== null) {
    return JSON.stringify(value, (_, part: unknown) => (typeof part === "bigint" ? `${part}n` : part))
  }
  return String(value)
}

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

/**
 * The raw string of one variable, through Effect `Config` so a `ConfigProvider` can stand in for
 * the process environment. Empty (or blank) counts as unset, as in `SNAKEPIT_SIZE= node app.js`.
 */
const readRaw = (key: string): Effect.Effect<Option.Option<string>> =>
  Config.option(Config.string(key)).pipe(
    // Reading an optional string fails only if the provider itself is broken: a defect.
    Effect.orDie,
    Effect.map((raw) =>
      Option.filter(
        Option.map(raw, (text) => text.trim()),
        (text) => text.length > 0
      )
    )
  )

/** Reads `key`, turns the text into the option's input with `parse`, and validates it under the env key. */
const fromEnv = <A>(
  key: string,
  parse: (raw: string) => unknown,
  validator: Validator<A>
): Effect.Effect<A | undefined, ConfigError> =>
  Effect.flatMap(
    readRaw(key),
    Option.match({
      onNone: () => Effect.succeed(undefined),
      onSome: (raw) => Either.mapLeft(validator(parse(raw)), (reason) => new ConfigError({ key, value: raw, reason }))
    })
  )

// Strict on purpose: `Number` alone would take "0x10", "1e3" and "" as numbers.
const DECIMAL = /^-?\d+(\.\d+)?$/

const toNumber = (raw: string): number => (DECIMAL.test(raw) ? Number(raw) : Number.NaN)

const toDurationInput = (raw: string): unknown =>
  DECIMAL.test(raw) ? Number(raw) : raw.toLowerCase() === "infinity" ? Duration.infinity : raw

const same = (raw: string): string => raw

const envInteger = (key: string, validator: Validator<number> = positiveInteger) => fromEnv(key, toNumber, validator)
const envDuration = (key: string, rule: DurationRule) =>
  fromEnv(key, toDurationInput, duration(rule, ENV_DURATION_EXPECTED))

type Loose<T> = { [K in keyof T]?: T[K] | undefined }

/** Drops the unset fields, so the result is an override layer that keeps lower layers' values. */
const defined = <T extends object>(fields: Loose<T>): T =>
  Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined)) as T

/** The environment as an override layer, every value already validated under its variable's name. */
const readEnvironment: Effect.Effect<PoolOptions, ConfigError> = Effect.gen(function* () {
  return defined<PoolOptions>({
    size: yield* fromEnv("SNAKEPIT_SIZE", toSizeInput, (value) =>
      Either.mapLeft(poolSize(value), () => "expected a positive integer like 4, or min..max like 2..8")
    ).pipe(Effect.map((bounds) => (bounds === undefined ? undefined : toPoolSize(bounds)))),
    scaleUpAfter: yield* envDuration("SNAKEPIT_SCALE_UP_AFTER", TIMEOUT),
    idleTimeout: yield* envDuration("SNAKEPIT_IDLE_TIMEOUT", UNBOUNDED_TIMEOUT),
    minReady: yield* envInteger("SNAKEPIT_MIN_READY"),
    capacity: yield* envInteger("SNAKEPIT_CAPACITY"),
    adapter: yield* fromEnv("SNAKEPIT_ADAPTER", same, adapterName),
    python: yield* fromEnv("SNAKEPIT_PYTHON", same, nonEmptyString),
    pythonPath: yield* fromEnv(
      "SNAKEPIT_PYTHON_PATH",
      // The platform's PATH separator: ":" on POSIX, ";" on Windows where ":" follows drive letters.
      (raw) => raw.split(delimiter).filter((entry) => entry.length > 0),
      pathList
    ),
    threadLimits: yield* fromEnv("SNAKEPIT_THREAD_LIMITS", same, threadLimitsList),
    startupBatchSize: yield* envInteger("SNAKEPIT_STARTUP_BATCH_SIZE"),
    startupBatchDelay: yield* envDuration("SNAKEPIT_STARTUP_BATCH_DELAY", DELAY),
    startupTimeout: yield* envDuration("SNAKEPIT_STARTUP_TIMEOUT", TIMEOUT),
    callTimeout: yield* envDuration("SNAKEPIT_CALL_TIMEOUT", UNBOUNDED_TIMEOUT),
    queue: defined({
      max: yield* envInteger("SNAKEPIT_QUEUE_MAX", integerAtLeast(0, "expected a non-negative integer")),
      timeout: yield* envDuration("SNAKEPIT_QUEUE_TIMEOUT", TIMEOUT)
    }),
    affinity: yield* fromEnv("SNAKEPIT_AFFINITY", same, affinity),
    sessions: defined({
      ttl: yield* envDuration("SNAKEPIT_SESSION_TTL", LIFETIME),
      max: yield* envInteger("SNAKEPIT_SESSION_MAX")
    }),
    recycle: defined({
      maxCalls: yield* envInteger("SNAKEPIT_RECYCLE_MAX_CALLS"),
      ttl: yield* envDuration("SNAKEPIT_RECYCLE_TTL", LIFETIME),
      maxRssMb: yield* fromEnv("SNAKEPIT_RECYCLE_MAX_RSS_MB", toNumber, positiveNumber)
    }),
    healthCheck: defined({ interval: yield* envDuration("SNAKEPIT_HEALTH_INTERVAL", TIMEOUT) }),
    maxMessageBytes: yield* envInteger("SNAKEPIT_MAX_MESSAGE_BYTES"),
    validateArguments: yield* fromEnv("SNAKEPIT_VALIDATE_ARGUMENTS", toBooleanInput, boolean),
    cancelGrace: yield* envDuration("SNAKEPIT_CANCEL_GRACE", TIMEOUT),
    transport: yield* fromEnv("SNAKEPIT_TRANSPORT", same, oneOf(TRANSPORTS)),
    grpc: defined({ listen: yield* fromEnv("SNAKEPIT_GRPC_LISTEN", same, oneOf(LISTENS)) }),
    dataDir: yield* fromEnv("SNAKEPIT_DATA_DIR", same, nonEmptyString)
  })
})

// ---------------------------------------------------------------------------------------------
// Merging
// ---------------------------------------------------------------------------------------------

/** The groups merged field by field: a pool setting `queue.max` keeps the inherited `queue.timeout`. */
const NESTED = ["queue", "sessions", "recycle", "healthCheck", "restart", "threadLimits", "env", "grpc"] as const

/** `over`'s set fields on top of `base`; `undefined` means "not set", never "clear". */
const overlay = <A extends object>(base: A, over: A): A => {
  const merged: Record<string, unknown> = { ...(base as Record<string, unknown>) }
  for (const [key, value] of Object.entries(over)) {
    if (value !== undefined) merged[key] = value
  }
  return merged as A
}

const mergeOptions = (base: PoolOptions, over: PoolOptions): PoolOptions => {
  const merged = overlay(base, over) as Record<string, unknown>
  for (const group of NESTED) {
    const lower = base[group]
    const upper = over[group]
    if (lower !== undefined && upper !== undefined) merged[group] = overlay<object>(lower, upper)
  }
  return merged as PoolOptions
}

// ---------------------------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------------------------

/** One pool's merged options, validated and defaulted; errors are keyed `<prefix><option path>`. */
const resolvePool = (
  name: string,
  options: PoolOptions,
  prefix: string
): Effect.Effect<ResolvedPoolOptions, ConfigError> =>
  Effect.gen(function* () {
    const field = <A>(path: string, value: unknown, validator: Validator<A>): Either.Either<A, ConfigError> =>
      Either.mapLeft(
        validator(value),
        (reason) => new ConfigError({ key: `${prefix}${path}`, value: render(value), reason })
      )
    const queue = options.queue ?? {}
    const sessions = options.sessions ?? {}
    const recycle = options.recycle ?? {}
    const healthCheck = options.healthCheck ?? {}
    const restart = options.restart ?? {}
    const grpc = options.grpc ?? {}

    const bounds = yield* field("size", options.size ?? DEFAULTS.size, poolSize)
    const size = bounds.min
    return {
      name,
      size,
      maxSize: bounds.max,
      scaleUpAfter: yield* field("scaleUpAfter", options.scaleUpAfter ?? DEFAULTS.scaleUpAfter, duration(TIMEOUT)),
      idleTimeout: yield* field(
        "idleTimeout",
        options.idleTimeout ?? DEFAULTS.idleTimeout,
        duration(UNBOUNDED_TIMEOUT)
      ),
      minReady: yield* field(
        "minReady",
        options.minReady ?? size,
        integerBetween(1, size, `expected an integer from 1 to size (${size}${bounds.max > size ? ", the min" : ""})`)
      ),
      capacity: yield* field("capacity", options.capacity ?? DEFAULTS.capacity, positiveInteger),
      adapter: yield* field("adapter", options.adapter ?? DEFAULTS.adapter, adapterName),
      python: yield* field("python", options.python, optional(nonEmptyString)),
      pythonPath: yield* field("pythonPath", options.pythonPath ?? DEFAULTS.pythonPath, pathList),
      env: yield* field("env", options.env ?? DEFAULTS.env, environment),
      threadLimits: yield* ThreadLimits.resolve(options.threadLimits).pipe(
        Effect.mapError((error) =>
          prefix === ""
            ? error
            : new ConfigError({ key: `${prefix}${error.key}`, value: error.value, reason: error.reason })
        )
      ),
      startupBatchSize: yield* field(
        "startupBatchSize",
        options.startupBatchSize ?? DEFAULTS.startupBatchSize,
        positiveInteger
      ),
      startupBatchDelay: yield* field(
        "startupBatchDelay",
        options.startupBatchDelay ?? DEFAULTS.startupBatchDelay,
        duration(DELAY)
      ),
      startupTimeout: yield* field(
        "startupTimeout",
        options.startupTimeout ?? DEFAULTS.startupTimeout,
        duration(TIMEOUT)
      ),
      callTimeout: yield* field(
        "callTimeout",
        options.callTimeout ?? DEFAULTS.callTimeout,
        duration(UNBOUNDED_TIMEOUT)
      ),
      gracefulTimeout: yield* field(
        "gracefulTimeout",
        options.gracefulTimeout ?? DEFAULTS.gracefulTimeout,
        duration(TIMEOUT)
      ),
      queue: {
        max: yield* field(
          "queue.max",
          queue.max ?? DEFAULTS.queue.max,
          integerAtLeast(0, "expected a non-negative integer")
        ),
        timeout: yield* field("queue.timeout", queue.timeout ?? DEFAULTS.queue.timeout, duration(TIMEOUT))
      },
      affinity: yield* field("affinity", options.affinity ?? DEFAULTS.affinity, affinity),
      sessions: {
        ttl: yield* field("sessions.ttl", sessions.ttl ?? DEFAULTS.sessions.ttl, duration(LIFETIME)),
        max: yield* field("sessions.max", sessions.max ?? DEFAULTS.sessions.max, positiveInteger)
      },
      recycle: {
        maxCalls: yield* field("recycle.maxCalls", recycle.maxCalls, optional(positiveInteger)),
        ttl: yield* field("recycle.ttl", recycle.ttl, optional(duration(LIFETIME))),
        maxRssMb: yield* field("recycle.maxRssMb", recycle.maxRssMb, optional(positiveNumber))
      },
      healthCheck: {
        interval: yield* field(
          "healthCheck.interval",
          healthCheck.interval ?? DEFAULTS.healthCheck.interval,
          duration(TIMEOUT)
        ),
        timeout: yield* field(
          "healthCheck.timeout",
          healthCheck.timeout ?? DEFAULTS.healthCheck.timeout,
          duration(TIMEOUT)
        ),
        maxMisses: yield* field(
          "healthCheck.maxMisses",
          healthCheck.maxMisses ?? DEFAULTS.healthCheck.maxMisses,
          positiveInteger
        )
      },
      restart: {
        baseDelay: yield* field("restart.baseDelay", restart.baseDelay ?? DEFAULTS.restart.baseDelay, duration(DELAY)),
        maxDelay: yield* field("restart.maxDelay", restart.maxDelay ?? DEFAULTS.restart.maxDelay, duration(DELAY)),
        maxRestarts: yield* field(
          "restart.maxRestarts",
          restart.maxRestarts ?? DEFAULTS.restart.maxRestarts,
          positiveInteger
        ),
        window: yield* field("restart.window", restart.window ?? DEFAULTS.restart.window, duration(DELAY)),
        cooldown: yield* field("restart.cooldown", restart.cooldown ?? DEFAULTS.restart.cooldown, duration(DELAY))
      },
      drainTimeout: yield* field("drainTimeout", options.drainTimeout ?? DEFAULTS.drainTimeout, duration(TIMEOUT)),
      cancelGrace: yield* field("cancelGrace", options.cancelGrace ?? DEFAULTS.cancelGrace, duration(TIMEOUT)),
      maxMessageBytes: yield* field(
        "maxMessageBytes",
        options.maxMessageBytes ?? DEFAULTS.maxMessageBytes,
        integerAtLeast(1024, "expected an integer of at least 1024")
      ),
      validateArguments: yield* field(
        "validateArguments",
        options.validateArguments ?? DEFAULTS.validateArguments,
        boolean
      ),
      transport: yield* field("transport", options.transport ?? DEFAULTS.transport, oneOf(TRANSPORTS)),
      grpc: { listen: yield* field("grpc.listen", grpc.listen ?? DEFAULTS.grpc.listen, oneOf(LISTENS)) },
      dataDir: yield* field("dataDir", options.dataDir, optional(nonEmptyString))
    }
  })

/**
 * Resolves the layer's options into one fully decided set per pool: a single pool "default"
 * without `pools`, else one per entry of `pools` in insertion order, each being the top-level
 * options overridden (group by group, field by field) by the pool's own. Precedence: code options,
 * then `SNAKEPIT_*` environment variables (read through Effect `Config`), then defaults.
 *
 * Fails with `ConfigError` keyed by the environment variable, the option path (e.g. `queue.max`),
 * or, with named pools, `pools.<name>.<path>`. A malformed environment variable fails even where
 * code overrides it, since it is a mistake in the deployment either way.
 */
export const resolveSnakepitOptions = (
  options: SnakepitOptions = {}
): Effect.Effect<ReadonlyArray<ResolvedPoolOptions>, ConfigError> =>
  Effect.gen(function* () {
    const { pools, ...topLevel } = options
    const base = mergeOptions(yield* readEnvironment, topLevel)
    if (pools === undefined) return [yield* resolvePool("default", base, "")]

    const entries = Object.entries(pools)
    if (entries.length === 0) {
      return yield* new ConfigError({
        key: "pools",
        value: "{}",
        reason: "expected at least one named pool; omit `pools` for a single default pool"
      })
    }
    return yield* Effect.forEach(entries, ([name, poolOptions]) =>
      POOL_NAME_PATTERN.test(name)
        ? resolvePool(name, mergeOptions(base, poolOptions ?? {}), `pools.${name}.`)
        : Effect.fail(
            new ConfigError({
              key: `pools.${name}`,
              value: name,
              reason: "expected a pool name of letters, digits, '_' and '-'"
            })
          )
    )
  })

/**
 * Validates a runtime `resize` like the `size` option: a positive integer (fixed), or
 * `{ min, max }` with `1 <= min <= max`. Fails with `ConfigError` keyed `size`.
 */
export const resolvePoolSize = (size: unknown): Effect.Effect<PoolSizeBounds, ConfigError> =>
  Either.mapLeft(poolSize(size), (reason) => new ConfigError({ key: "size", value: render(size), reason }))

/** `control` (layer-wide): the option, else `SNAKEPIT_CONTROL`, else on. */
export const resolveControl = (option: boolean | undefined): Effect.Effect<boolean, ConfigError> =>
  option !== undefined
    ? Either.mapLeft(boolean(option), (reason) => new ConfigError({ key: "control", value: render(option), reason }))
    : Effect.map(fromEnv("SNAKEPIT_CONTROL", toBooleanInput, boolean), (fromEnv) => fromEnv ?? true)
