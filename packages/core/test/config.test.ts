import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect } from "effect"
import { resolveControl, resolveSnakepitOptions } from "../src/internal/config.js"
import type { SnakepitOptions } from "../src/PoolOptions.js"
import { DEFAULT_ADAPTER } from "../src/Worker.js"

// Every test supplies its own environment, so the machine's SNAKEPIT_* variables never leak in.
const resolve = (options?: SnakepitOptions, env: Record<string, string> = {}) =>
  resolveSnakepitOptions(options).pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))))

const resolveOne = (options?: SnakepitOptions, env: Record<string, string> = {}) =>
  Effect.map(resolve(options, env), (pools) => {
    expect(pools).toHaveLength(1)
    return pools[0]!
  })

const failure = (options?: SnakepitOptions, env: Record<string, string> = {}) => Effect.flip(resolve(options, env))

const ms = (duration: Duration.Duration | undefined) =>
  duration === undefined ? undefined : Duration.toMillis(duration)

describe("resolveSnakepitOptions", () => {
  it.effect("fills every default", () =>
    Effect.gen(function* () {
      const pool = yield* resolveOne()
      expect(pool).toMatchObject({
        name: "default",
        size: 2,
        minReady: 2,
        capacity: 1,
        adapter: DEFAULT_ADAPTER,
        python: undefined,
        pythonPath: [],
        env: {},
        threadLimits: { omp: 1, openblas: 1, mkl: 1, numexpr: 1, veclib: 1 },
        startupBatchSize: 8,
        affinity: "strict_queue",
        maxMessageBytes: 64 * 1024 * 1024,
        dataDir: undefined,
        recycle: { maxCalls: undefined, ttl: undefined, maxRssMb: undefined }
      })
      expect(pool.queue.max).toBe(1000)
      expect(pool.sessions.max).toBe(10_000)
      expect(pool.healthCheck.maxMisses).toBe(3)
      expect(pool.restart.maxRestarts).toBe(5)
      expect(
        [
          pool.startupBatchDelay,
          pool.startupTimeout,
          pool.callTimeout,
          pool.gracefulTimeout,
          pool.queue.timeout,
          pool.sessions.ttl,
          pool.healthCheck.interval,
          pool.healthCheck.timeout,
          pool.restart.baseDelay,
          pool.restart.maxDelay,
          pool.restart.window,
          pool.restart.cooldown,
          pool.drainTimeout
        ].map(ms)
      ).toEqual([0, 30_000, 60_000, 2_000, 30_000, 1_800_000, 10_000, 5_000, 100, 10_000, 60_000, 30_000, 30_000])
      expect(Duration.isDuration(pool.callTimeout)).toBe(true)
    })
  )

  it.effect("size: a number is fixed, { min, max } elastic; from code or SNAKEPIT_SIZE=min..max", () =>
    Effect.gen(function* () {
      const fixed = yield* resolveOne({ size: 3 })
      expect([fixed.size, fixed.maxSize, fixed.minReady]).toEqual([3, 3, 3])
      expect([ms(fixed.scaleUpAfter), ms(fixed.idleTimeout)]).toEqual([1_000, 300_000])
      const elastic = yield* resolveOne({
        size: { min: 2, max: 8 },
        scaleUpAfter: "250 millis",
        idleTimeout: "1 minute"
      })
      expect([elastic.size, elastic.maxSize, elastic.minReady]).toEqual([2, 8, 2])
      expect([ms(elastic.scaleUpAfter), ms(elastic.idleTimeout)]).toEqual([250, 60_000])
      const env = yield* resolveOne(undefined, {
        SNAKEPIT_SIZE: "2..6",
        SNAKEPIT_SCALE_UP_AFTER: "500",
        SNAKEPIT_IDLE_TIMEOUT: "infinity"
      })
      expect([env.size, env.maxSize, ms(env.scaleUpAfter), ms(env.idleTimeout)]).toEqual([2, 6, 500, Infinity])
      expect((yield* resolveOne(undefined, { SNAKEPIT_SIZE: "3..3" })).maxSize).toBe(3)
      // Named pools inherit and override the bounds like any option.
      const pools = yield* resolve({ size: { min: 1, max: 4 }, pools: { a: {}, b: { size: 2 } } })
      expect(pools.map((p) => [p.size, p.maxSize])).toEqual([
        [1, 4],
        [2, 2]
      ])
    })
  )

  it.effect("control: on by default, off by option or SNAKEPIT_CONTROL", () =>
    Effect.gen(function* () {
      const control = (option: boolean | undefined, env: Record<string, string> = {}) =>
        resolveControl(option).pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))))
      expect(yield* control(undefined)).toBe(true)
      expect(yield* control(false, { SNAKEPIT_CONTROL: "true" })).toBe(false)
      expect(yield* control(undefined, { SNAKEPIT_CONTROL: "off" })).toBe(false)
      expect(yield* control(undefined, { SNAKEPIT_CONTROL: "0" })).toBe(false)
      const bad = yield* Effect.flip(control(undefined, { SNAKEPIT_CONTROL: "maybe" }))
      expect(bad).toMatchObject({ _tag: "ConfigError", key: "SNAKEPIT_CONTROL", value: "maybe" })
    })
  )

  it.effect("minReady follows size when unset", () =>
    Effect.gen(function* () {
      const pool = yield* resolveOne({ size: 5 })
      expect([pool.size, pool.minReady]).toEqual([5, 5])
    })
  )

  it.effect("reads every SNAKEPIT_* variable", () =>
    Effect.gen(function* () {
      const pool = yield* resolveOne(undefined, {
        SNAKEPIT_SIZE: "4",
        SNAKEPIT_MIN_READY: "3",
        SNAKEPIT_CAPACITY: "2",
        SNAKEPIT_ADAPTER: "my_pkg.adapter:MyAdapter",
        SNAKEPIT_PYTHON: "/opt/py/bin/python3",
        SNAKEPIT_PYTHON_PATH: "/a:/b",
        SNAKEPIT_STARTUP_BATCH_SIZE: "16",
        SNAKEPIT_STARTUP_BATCH_DELAY: "250 millis",
        SNAKEPIT_STARTUP_TIMEOUT: "45 seconds",
        SNAKEPIT_CALL_TIMEOUT: "2 minutes",
        SNAKEPIT_QUEUE_MAX: "0",
        SNAKEPIT_QUEUE_TIMEOUT: "5 seconds",
        SNAKEPIT_AFFINITY: "strict_queue",
        SNAKEPIT_SESSION_TTL: "1 hour",
        SNAKEPIT_SESSION_MAX: "50",
        SNAKEPIT_RECYCLE_MAX_CALLS: "1000",
        SNAKEPIT_RECYCLE_TTL: "10 minutes",
        SNAKEPIT_RECYCLE_MAX_RSS_MB: "512.5",
        SNAKEPIT_HEALTH_INTERVAL: "3 seconds",
        SNAKEPIT_DATA_DIR: "/var/lib/snakepit",
        SNAKEPIT_THREAD_LIMITS: "openblas=4, omp=2"
      })
      expect(pool).toMatchObject({
        size: 4,
        minReady: 3,
        capacity: 2,
        adapter: "my_pkg.adapter:MyAdapter",
        python: "/opt/py/bin/python3",
        pythonPath: ["/a", "/b"],
        startupBatchSize: 16,
        affinity: "strict_queue",
        dataDir: "/var/lib/snakepit",
        threadLimits: { omp: 2, openblas: 4, mkl: 1, numexpr: 1, veclib: 1 }
      })
      expect(pool.queue.max).toBe(0)
      expect(pool.sessions.max).toBe(50)
      expect(pool.recycle.maxCalls).toBe(1000)
      expect(pool.recycle.maxRssMb).toBe(512.5)
      expect(
        [
          pool.startupBatchDelay,
          pool.startupTimeout,
          pool.callTimeout,
          pool.queue.timeout,
          pool.sessions.ttl,
          pool.recycle.ttl,
          pool.healthCheck.interval
        ].map(ms)
      ).toEqual([250, 45_000, 120_000, 5_000, 3_600_000, 600_000, 3_000])
    })
  )

  it.effect("parses env durations as Effect strings, bare milliseconds or infinity", () =>
    Effect.gen(function* () {
      const timeout = (raw: string) =>
        Effect.map(resolveOne(undefined, { SNAKEPIT_CALL_TIMEOUT: raw }), (pool) => pool.callTimeout)
      expect(ms(yield* timeout("500 millis"))).toBe(500)
      expect(ms(yield* timeout("2 seconds"))).toBe(2_000)
      expect(ms(yield* timeout("1500"))).toBe(1_500)
      expect(Duration.isFinite(yield* timeout("infinity"))).toBe(false)
    })
  )

  it.effect("treats an empty variable as unset", () =>
    Effect.gen(function* () {
      const pool = yield* resolveOne(undefined, { SNAKEPIT_SIZE: "", SNAKEPIT_PYTHON: "  " })
      expect([pool.size, pool.python]).toEqual([2, undefined])
    })
  )

  it.effect("code options beat the environment", () =>
    Effect.gen(function* () {
      const pool = yield* resolveOne(
        { size: 6, queue: { max: 7 }, callTimeout: "3 seconds", threadLimits: { omp: 3 } },
        {
          SNAKEPIT_SIZE: "4",
          SNAKEPIT_QUEUE_MAX: "100",
          SNAKEPIT_QUEUE_TIMEOUT: "9 seconds",
          SNAKEPIT_CALL_TIMEOUT: "1 minute",
          SNAKEPIT_THREAD_LIMITS: "omp=8,openblas=4"
        }
      )
      expect([pool.size, pool.minReady, pool.queue.max]).toEqual([6, 6, 7])
      // Fields the code leaves unset still come from the environment.
      expect(ms(pool.queue.timeout)).toBe(9_000)
      expect(ms(pool.callTimeout)).toBe(3_000)
      expect(pool.threadLimits).toEqual({ omp: 3, openblas: 4, mkl: 1, numexpr: 1, veclib: 1 })
    })
  )

  describe("bad environment values name the variable and its raw text", () => {
    const cases: ReadonlyArray<readonly [key: string, raw: string, reason: string]> = [
      ["SNAKEPIT_SIZE", "zero", "expected a positive integer"],
      ["SNAKEPIT_SIZE", "0", "expected a positive integer"],
      ["SNAKEPIT_SIZE", "-1", "expected a positive integer"],
      ["SNAKEPIT_SIZE", "1.5", "expected a positive integer"],
      ["SNAKEPIT_SIZE", "0x10", "expected a positive integer"],
      ["SNAKEPIT_SIZE", "8..2", "expected a positive integer like 4, or min..max like 2..8"],
      ["SNAKEPIT_SIZE", "0..2", "expected a positive integer like 4, or min..max like 2..8"],
      ["SNAKEPIT_SCALE_UP_AFTER", "0", "expected a duration greater than zero"],
      ["SNAKEPIT_IDLE_TIMEOUT", "soon", "expected a duration like"],
      ["SNAKEPIT_QUEUE_MAX", "-1", "expected a non-negative integer"],
      ["SNAKEPIT_AFFINITY", "sticky", "expected one of hint, strict_queue, strict_fail_fast"],
      ["SNAKEPIT_CALL_TIMEOUT", "soon", "expected a duration like '30 seconds' or '500 millis'"],
      ["SNAKEPIT_CALL_TIMEOUT", "-5 seconds", "expected a non-negative duration"],
      ["SNAKEPIT_QUEUE_TIMEOUT", "0", "expected a duration greater than zero"],
      ["SNAKEPIT_STARTUP_TIMEOUT", "infinity", "expected a finite duration"],
      ["SNAKEPIT_THREAD_LIMITS", "blas=2", "expected comma-separated library=count pairs"],
      ["SNAKEPIT_THREAD_LIMITS", "openblas=x", "expected comma-separated library=count pairs"],
      ["SNAKEPIT_THREAD_LIMITS", "openblas=0", "expected comma-separated library=count pairs"],
      ["SNAKEPIT_ADAPTER", "my-pkg:Adapter", "expected a Python module path"],
      ["SNAKEPIT_RECYCLE_MAX_RSS_MB", "lots", "expected a positive number"]
    ]
    for (const [key, raw, reason] of cases) {
      it.effect(`${key}=${raw}`, () =>
        Effect.gen(function* () {
          const error = yield* failure(undefined, { [key]: raw })
          expect(error._tag).toBe("ConfigError")
          expect(error.key).toBe(key)
          expect(error.value).toBe(raw)
          expect(error.reason).toContain(reason)
        })
      )
    }
  })

  describe("bad code values name the option path", () => {
    const cases: ReadonlyArray<readonly [options: SnakepitOptions, key: string, value: string, reason: string]> = [
      [{ size: 0 }, "size", "0", "expected a positive integer"],
      [{ size: 2.5 }, "size", "2.5", "expected a positive integer"],
      [{ size: { min: 3, max: 2 } }, "size", '{"min":3,"max":2}', "expected min (3) <= max (2)"],
      [{ size: { min: 0, max: 2 } }, "size", '{"min":0,"max":2}', "expected a positive integer, or { min, max }"],
      [{ size: { min: 1 } as never }, "size", '{"min":1}', "expected a positive integer, or { min, max }"],
      [{ size: { min: 2, max: 4 }, minReady: 3 }, "minReady", "3", "expected an integer from 1 to size (2, the min)"],
      [{ scaleUpAfter: 0 }, "scaleUpAfter", "0", "expected a duration greater than zero"],
      [{ idleTimeout: -1 }, "idleTimeout", "-1", "expected a non-negative duration"],
      [{ queue: { max: -1 } }, "queue.max", "-1", "expected a non-negative integer"],
      [{ size: 2, minReady: 3 }, "minReady", "3", "expected an integer from 1 to size (2)"],
      [{ minReady: 0 }, "minReady", "0", "expected an integer from 1 to size (2)"],
      [{ recycle: { maxRssMb: 0 } }, "recycle.maxRssMb", "0", "expected a positive number"],
      [{ recycle: { maxCalls: 0 } }, "recycle.maxCalls", "0", "expected a positive integer"],
      [
        { callTimeout: "soon" as Duration.DurationInput },
        "callTimeout",
        "soon",
        "expected a duration like '30 seconds' or '500 millis'"
      ],
      [{ startupTimeout: -5 }, "startupTimeout", "-5", "expected a non-negative duration"],
      [{ queue: { timeout: 0 } }, "queue.timeout", "0", "expected a duration greater than zero"],
      [{ healthCheck: { interval: Number.NaN } }, "healthCheck.interval", "NaN", "expected a duration like"],
      [{ drainTimeout: Duration.infinity }, "drainTimeout", "Infinity", "expected a finite duration"],
      [{ adapter: "" }, "adapter", "", "expected a Python module path"],
      [{ adapter: "pkg:Cls:Extra" }, "adapter", "pkg:Cls:Extra", "expected a Python module path"],
      [{ affinity: "sticky" as "hint" }, "affinity", "sticky", "expected one of hint, strict_queue, strict_fail_fast"],
      [{ maxMessageBytes: 512 }, "maxMessageBytes", "512", "expected an integer of at least 1024"],
      [{ threadLimits: { omp: 0 } }, "threadLimits.omp", "0", "must be a positive integer"]
    ]
    for (const [options, key, value, reason] of cases) {
      it.effect(`${key}=${value}`, () =>
        Effect.gen(function* () {
          const error = yield* failure(options)
          expect(error.key).toBe(key)
          expect(error.value).toBe(value)
          expect(error.reason).toContain(reason)
        })
      )
    }
  })

  it.effect("accepts the forms a DurationInput may take", () =>
    Effect.gen(function* () {
      const pool = yield* resolveOne({
        startupTimeout: 1500,
        callTimeout: Duration.infinity,
        queue: { timeout: "2 minutes" },
        gracefulTimeout: [1, 500_000_000],
        drainTimeout: BigInt(3_000_000_000)
      })
      expect(ms(pool.startupTimeout)).toBe(1_500)
      expect(Duration.isFinite(pool.callTimeout)).toBe(false)
      expect(ms(pool.queue.timeout)).toBe(120_000)
      expect(ms(pool.gracefulTimeout)).toBe(1_500)
      expect(ms(pool.drainTimeout)).toBe(3_000)
    })
  )

  describe("named pools", () => {
    it.effect("resolves one pool per entry, in order, merging field by field", () =>
      Effect.gen(function* () {
        const pools = yield* resolve(
          {
            size: 3,
            queue: { max: 10, timeout: "4 seconds" },
            threadLimits: { openblas: 2 },
            env: { A: "1" },
            pools: {
              cpu: {},
              gpu: { size: 1, queue: { max: 2 }, threadLimits: { omp: 4 }, env: { B: "2" } }
            }
          },
          { SNAKEPIT_CAPACITY: "2" }
        )
        expect(pools.map((pool) => pool.name)).toEqual(["cpu", "gpu"])
        const [cpu, gpu] = pools
        expect([cpu!.size, cpu!.minReady, cpu!.capacity, cpu!.queue.max]).toEqual([3, 3, 2, 10])
        expect(ms(cpu!.queue.timeout)).toBe(4_000)
        expect([gpu!.size, gpu!.minReady, gpu!.capacity, gpu!.queue.max]).toEqual([1, 1, 2, 2])
        // Overriding only queue.max keeps the top-level queue.timeout.
        expect(ms(gpu!.queue.timeout)).toBe(4_000)
        expect(gpu!.threadLimits).toEqual({ omp: 4, openblas: 2, mkl: 1, numexpr: 1, veclib: 1 })
        expect(gpu!.env).toEqual({ A: "1", B: "2" })
        expect(cpu!.threadLimits).toEqual({ omp: 1, openblas: 2, mkl: 1, numexpr: 1, veclib: 1 })
      })
    )

    it.effect("keys a bad value inside a pool as pools.<name>.<path>", () =>
      Effect.gen(function* () {
        const error = yield* failure({ pools: { cpu: {}, gpu: { queue: { max: -3 } } } })
        expect([error.key, error.value]).toEqual(["pools.gpu.queue.max", "-3"])
        const inherited = yield* failure({ size: 2, pools: { gpu: { minReady: 4 } } })
        expect([inherited.key, inherited.value]).toEqual(["pools.gpu.minReady", "4"])
        const limits = yield* failure({ pools: { gpu: { threadLimits: { omp: -1 } } } })
        expect([limits.key, limits.value]).toEqual(["pools.gpu.threadLimits.omp", "-1"])
      })
    )

    it.effect("rejects an empty pools object", () =>
      Effect.gen(function* () {
        const error = yield* failure({ pools: {} })
        expect([error.key, error.value]).toEqual(["pools", "{}"])
        expect(error.reason).toContain("at least one")
      })
    )

    it.effect("rejects a pool name outside [A-Za-z0-9_-]", () =>
      Effect.gen(function* () {
        const error = yield* failure({ pools: { ok: {}, "gpu pool": {} } })
        expect([error.key, error.value]).toEqual(["pools.gpu pool", "gpu pool"])
      })
    )
  })
})
