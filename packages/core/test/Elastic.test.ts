/**
 * Elastic pools, resize and drain, on TestClock with fake workers: spikes, sustained load,
 * idle decay (sparing a live session's worker), resize during startup and below the busy count.
 */
import { describe, expect, it } from "@effect/vitest"
import { FakeWorkers } from "@snakepit/testkit"
import { Chunk, Duration, Effect, Fiber, Stream, TestClock } from "effect"
import { type PoolEvent, type SnakepitOptions, SnakepitPool } from "../src/index.js"

const start = (options: SnakepitOptions, fake = FakeWorkers.make()) =>
  Effect.map(SnakepitPool.make(options).pipe(Effect.provide(fake.layer)), (pool) => ({ pool, fake }))

/** Lets forked fibers run up to their next suspension. */
const settle = TestClock.adjust(Duration.zero)

const aliveIds = (fake: FakeWorkers.FakeWorkers) => Effect.map(fake.alive, (alive) => alive.map((w) => w.id))

describe("elastic pools", () => {
  it.scoped("a spike: workers are added once callers wait longer than scaleUpAfter, up to max", () =>
    Effect.gen(function* () {
      const { fake, pool } = yield* start({ size: { min: 1, max: 3 }, scaleUpAfter: "1 second" })
      const calls = yield* Effect.forEach([1, 2, 3, 4], () => Effect.fork(pool.execute("sleep", { ms: 10_000 })))
      yield* settle
      expect(fake.started).toHaveLength(1)
      expect(yield* pool.stats()).toMatchObject({ size: 1, queued: 3 })
      yield* TestClock.adjust("999 millis")
      expect(fake.started).toHaveLength(1)
      yield* TestClock.adjust("1 millis")
      // Three callers waited 1 s; only two more workers fit under max.
      expect(fake.started).toHaveLength(3)
      expect(yield* pool.stats()).toMatchObject({ size: 3, ready: 3, busy: 3, queued: 1 })
      yield* TestClock.adjust("20 seconds")
      yield* Fiber.joinAll(calls)
      expect(fake.started).toHaveLength(3)
      expect((yield* pool.report()).max).toBe(3)
    })
  )

  it.scoped("sustained load grows the pool to max and no further; every call is served", () =>
    Effect.gen(function* () {
      const { fake, pool } = yield* start({ size: { min: 1, max: 2 }, scaleUpAfter: "1 second" })
      const calls = yield* Effect.forEach(Array.from({ length: 6 }), () =>
        Effect.fork(pool.execute("sleep", { ms: 2_000 }))
      )
      for (let second = 0; second < 8; second++) yield* TestClock.adjust("1 second")
      expect((yield* Fiber.joinAll(calls)).length).toBe(6)
      expect(fake.started).toHaveLength(2)
      expect(yield* pool.stats()).toMatchObject({ size: 2, requests: 6, errors: 0, restarts: 0 })
    })
  )

  it.scoped("idle decay retires workers idle longer than idleTimeout down to min, never a live session's", () =>
    Effect.gen(function* () {
      const { fake, pool } = yield* start({
        size: { min: 1, max: 2 },
        scaleUpAfter: "1 second",
        idleTimeout: "1 minute",
        sessions: { ttl: "1 hour" }
      })
      const load = yield* Effect.forEach([1, 2], () => Effect.fork(pool.execute("sleep", { ms: 10_000 })))
      yield* TestClock.adjust("11 seconds")
      yield* Fiber.joinAll(load)
      const [a, b] = fake.started
      expect(yield* aliveIds(fake)).toEqual([a!.id, b!.id])
      // a (idle since 10 s) becomes the home of session "s"; b is used once more at 20 s.
      yield* pool.execute("echo", { value: 1 }, { session: "s" })
      expect(fake.calls.at(-1)?.workerId).toBe(a!.id)
      yield* TestClock.adjust("9 seconds")
      yield* pool.execute("echo", { value: 2 })
      expect(fake.calls.at(-1)?.workerId).toBe(b!.id)
      // a has been idle longest, but it is the session's home: b goes, one idle minute after 20 s.
      yield* TestClock.adjust("59 seconds")
      expect(yield* aliveIds(fake)).toEqual([a!.id, b!.id])
      yield* TestClock.adjust("1 second")
      expect(yield* aliveIds(fake)).toEqual([a!.id])
      expect(yield* pool.stats()).toMatchObject({ size: 1, ready: 1 })
      // At min: nothing more retires, however long it idles.
      yield* TestClock.adjust("10 minutes")
      expect(yield* aliveIds(fake)).toEqual([a!.id])
    })
  )

  it.scoped("events: started, ready, retired (idle), resized", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: { min: 1, max: 2 }, scaleUpAfter: "1 second", idleTimeout: "1 minute" })
      const collected = yield* Effect.fork(Stream.runCollect(Stream.take(pool.events, 4)))
      yield* settle
      const call = yield* Effect.fork(pool.execute("sleep", { ms: 5_000 }))
      const queued = yield* Effect.fork(pool.execute("sleep", { ms: 5_000 }))
      yield* TestClock.adjust("1 second")
      yield* TestClock.adjust("6 seconds")
      yield* Fiber.joinAll([call, queued])
      yield* TestClock.adjust("2 minutes")
      yield* pool.resize({ min: 1, max: 4 })
      const events = Chunk.toReadonlyArray(yield* Fiber.join(collected)) as ReadonlyArray<PoolEvent>
      // Subscribed after startup: the worker added for the queued caller, then its retirement.
      expect(events.map((e) => e._tag)).toEqual(["Started", "Ready", "Retired", "Resized"])
      expect(events[1]).toMatchObject({ workerId: "default-2.1", pid: expect.any(Number) })
      expect(events.find((e) => e._tag === "Retired")).toMatchObject({ pool: "default", reason: "idle" })
      expect(events.at(-1)).toMatchObject({ _tag: "Resized", min: 1, max: 4, previousMin: 1, previousMax: 2 })
    })
  )
})

describe("resize", () => {
  it.scoped("grows in the startup window, and a resize during startup stops the workers still starting", () =>
    Effect.gen(function* () {
      const fake = FakeWorkers.make({ startDelay: (attempt) => (attempt === 1 ? Duration.zero : "1 second") })
      const { pool } = yield* start({ size: 1, startupBatchSize: 1 }, fake)
      expect(yield* pool.resize(4)).toEqual({ min: 4, max: 4 })
      expect((yield* pool.stats()).size).toBe(4)
      yield* settle
      yield* TestClock.adjust("1 second")
      expect(fake.started).toHaveLength(2) // one at a time: the window is 1
      yield* TestClock.adjust("500 millis")
      // Two slots are still waiting or starting: shrinking to 2 takes those, never the ready ones.
      yield* pool.resize(2)
      expect((yield* pool.stats()).size).toBe(2)
      yield* TestClock.adjust("10 seconds")
      expect(fake.started).toHaveLength(2)
      expect(yield* pool.stats()).toMatchObject({ size: 2, ready: 2 })
      expect((yield* pool.workers()).map((w) => w.id)).toEqual(["default-1.1", "default-2.1"])
    })
  )

  it.scoped("below the busy count: the busy workers finish their calls, then leave", () =>
    Effect.gen(function* () {
      const { fake, pool } = yield* start({ size: 3 })
      const calls = yield* Effect.forEach([1, 2, 3], () => Effect.fork(pool.execute("sleep", { ms: 10_000 })))
      yield* settle
      yield* pool.resize(1)
      expect(yield* pool.stats()).toMatchObject({ size: 1, busy: 1 })
      const workers = yield* pool.workers()
      expect(workers.map((w) => w.state).sort()).toEqual(["busy", "stopping", "stopping"])
      const kept = workers.find((w) => w.state === "busy")!.id
      const next = yield* Effect.fork(pool.execute("echo", { value: "after" }))
      yield* TestClock.adjust("10 seconds")
      expect((yield* Fiber.joinAll(calls)).length).toBe(3)
      expect(yield* Fiber.join(next)).toBe("after")
      expect(yield* aliveIds(fake)).toEqual([kept])
      expect(fake.calls.at(-1)?.workerId).toBe(kept)
    })
  )

  it.scoped("a bad size is a ConfigError keyed size, and changes nothing", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: 2 })
      for (const size of [0, -1, 1.5, { min: 3, max: 2 }, { min: 0, max: 2 }]) {
        const error = yield* Effect.flip(pool.resize(size as never))
        expect(error).toMatchObject({ _tag: "ConfigError", key: "size" })
      }
      expect((yield* pool.report()).min).toBe(2)
      expect((yield* pool.stats()).size).toBe(2)
    })
  )
})

describe("drain", () => {
  it.scoped("running calls finish; queued and new calls get PoolDraining; completes when none runs", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: 1 })
      const running = yield* Effect.fork(pool.execute("sleep", { ms: 5_000 }))
      yield* settle
      const queued = yield* Effect.fork(pool.execute("echo", { value: 1 }))
      yield* settle
      const drained = yield* Effect.fork(pool.drain())
      yield* settle
      expect(yield* Effect.flip(Fiber.join(queued))).toMatchObject({ _tag: "PoolDraining", pool: "default" })
      expect(yield* Effect.flip(pool.execute("echo", { value: 2 }))).toMatchObject({ _tag: "PoolDraining" })
      expect(drained.unsafePoll()).toBeNull()
      expect((yield* pool.report()).draining).toBe(true)
      yield* TestClock.adjust("5 seconds")
      expect(yield* Fiber.join(running)).toEqual({ slept_ms: 5_000 })
      yield* Fiber.join(drained)
      yield* pool.drain() // again: already drained
    })
  )
})

describe("report", () => {
  it.scoped("per-tool latency over the window, workers in detail", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: 1 })
      for (const ms of [10, 20, 30, 40, 1000]) {
        const call = yield* Effect.fork(pool.execute("sleep", { ms }))
        yield* TestClock.adjust(Duration.millis(ms))
        yield* Fiber.join(call)
      }
      yield* Effect.flip(pool.execute("nope"))
      const report = yield* pool.report()
      expect(report.tools.find((t) => t.tool === "sleep")).toMatchObject({
        calls: 5,
        errors: 0,
        window: 5,
        p50Ms: 30,
        p99Ms: 1000,
        maxMs: 1000
      })
      expect(report.tools.find((t) => t.tool === "nope")).toMatchObject({ calls: 1, errors: 1 })
      const running = yield* Effect.fork(pool.execute("sleep", { ms: 100 }))
      yield* settle
      const [worker] = (yield* pool.report()).workers
      expect(worker).toMatchObject({ id: "default-1.1", state: "busy", calls: 6, running: ["sleep"], ageMs: 1100 })
      yield* TestClock.adjust("100 millis")
      yield* Fiber.join(running)
    })
  )
})
