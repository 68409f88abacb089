/**
 * Deterministic pool tests: fake workers, time on TestClock, no real sleeps.
 */
import { describe, expect, it } from "@effect/vitest"
import { FakeWorkers } from "@snakepit/testkit"
import { Chunk, Deferred, Duration, Effect, Either, Fiber, Metric, Stream, TestClock, type Tracer } from "effect"
import { SnakepitMetrics, type SnakepitOptions, SnakepitPool, WorkerStartError } from "../src/index.js"

const start = (options: SnakepitOptions, fake = FakeWorkers.make()) =>
  Effect.map(SnakepitPool.make(options).pipe(Effect.provide(fake.layer)), (pool) => ({ pool, fake }))

/** Lets forked fibers run up to their next suspension. */
const settle = TestClock.adjust(Duration.zero)

describe("pool on TestClock", () => {
  it.scoped("waiters are served first come, first served", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: 1 })
      const order: Array<string> = []
      const call = (name: string, ms: number) =>
        Effect.fork(Effect.tap(pool.execute("sleep", { ms }), () => Effect.sync(() => order.push(name))))
      const a = yield* call("a", 100)
      yield* settle
      const b = yield* call("b", 10)
      yield* settle
      const c = yield* call("c", 10)
      yield* settle
      expect((yield* pool.stats()).queued).toBe(2)
      yield* TestClock.adjust("200 millis")
      yield* Fiber.joinAll([a, b, c])
      expect(order).toEqual(["a", "b", "c"])
      expect(yield* pool.stats()).toMatchObject({ busy: 0, queued: 0, requests: 3, errors: 0 })
    })
  )

  it.scoped("a full queue refuses at once; a queue timeout fires exactly on time", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: 1, queue: { max: 1, timeout: "1 second" } })
      const busy = yield* Effect.fork(pool.execute("sleep", { ms: 5_000 }))
      yield* settle
      const waiting = yield* Effect.fork(pool.execute("echo", { value: 1 }))
      yield* settle
      const full = yield* Effect.flip(pool.execute("echo", { value: 2 }))
      expect(full._tag).toBe("QueueFull")
      yield* TestClock.adjust("999 millis")
      expect(waiting.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 millis")
      const timedOut = yield* Effect.flip(Fiber.join(waiting))
      expect(timedOut._tag).toBe("QueueTimeout")
      expect((yield* pool.stats()).queueTimeouts).toBe(1)
      yield* TestClock.adjust("5 seconds")
      yield* Fiber.join(busy)
    })
  )

  it.scoped("a caller interrupted while queued never takes or leaks a worker", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: 1 })
      const busy = yield* Effect.fork(pool.execute("sleep", { ms: 100 }))
      yield* settle
      const queued = yield* Effect.fork(pool.execute("echo", { value: "never" }))
      yield* settle
      yield* Fiber.interrupt(queued)
      expect((yield* pool.stats()).queued).toBe(0)
      yield* TestClock.adjust("100 millis")
      yield* Fiber.join(busy)
      expect(yield* pool.execute("echo", { value: "served" })).toBe("served")
      expect((yield* pool.stats()).busy).toBe(0)
    })
  )

  it.scoped("a call timeout at the same instant as the reply never leaks the worker", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: 1 })
      const call = yield* Effect.fork(Effect.either(pool.execute("sleep", { ms: 500 }, { timeout: "500 millis" })))
      yield* TestClock.adjust("500 millis")
      const outcome = yield* Fiber.join(call)
      // Either side may win the tie; what matters is that the worker is free afterwards.
      if (Either.isLeft(outcome)) expect(outcome.left._tag).toBe("CallTimeout")
      expect((yield* pool.stats()).busy).toBe(0)
      expect(yield* pool.execute("echo", { value: "next" })).toBe("next")
    })
  )

  it.scoped("per-worker capacity is returned when callers are interrupted mid-call", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: 1, capacity: 2 })
      const calls = yield* Effect.forEach([1, 2, 3], () => Effect.fork(pool.execute("sleep", { ms: 1_000 })))
      yield* settle
      expect(yield* pool.stats()).toMatchObject({ busy: 1, queued: 1 })
      yield* Fiber.interruptAll(calls)
      // A cancelled call's lease comes back once the worker confirms it stopped (at once, here).
      yield* settle
      expect(yield* pool.stats()).toMatchObject({ busy: 0, queued: 0 })
      const both = yield* Effect.fork(
        Effect.all([pool.execute("sleep", { ms: 10 }), pool.execute("sleep", { ms: 10 })], { concurrency: 2 })
      )
      yield* TestClock.adjust("10 millis")
      expect(yield* Fiber.join(both)).toHaveLength(2)
    })
  )

  it.scoped("a crash fails the running call, and the slot restarts after its backoff", () =>
    Effect.gen(function* () {
      const { pool, fake } = yield* start({ size: 1, restart: { baseDelay: "1 second", maxDelay: "10 seconds" } })
      const call = yield* Effect.fork(pool.execute("sleep", { ms: 10_000 }))
      yield* settle
      yield* fake.started[0]!.crash({ code: 3, signal: null })
      const error = yield* Effect.flip(Fiber.join(call))
      expect(error._tag).toBe("WorkerCrashed")
      yield* settle
      expect(fake.started).toHaveLength(1)
      // Jitter keeps the first delay within [0.8 s, 1.2 s].
      yield* TestClock.adjust("1200 millis")
      expect(fake.started).toHaveLength(2)
      expect((yield* pool.stats()).restarts).toBe(1)
      expect(yield* pool.execute("echo", { value: "back" })).toBe("back")
    })
  )

  it.scoped("a crash storm slows restarts but never leaves the pool without workers for long", () =>
    Effect.gen(function* () {
      // The defaults: base 100 ms, at most 10 s apart, 5 crashes within a minute before a warning.
      const { pool, fake } = yield* start({ size: 1 })
      // A worker killed every 300 ms for 10 s.
      for (let t = 0; t < 10_000; t += 300) {
        const alive = yield* fake.alive
        for (const worker of alive) yield* worker.crash()
        yield* TestClock.adjust("300 millis")
      }
      const startedDuringStorm = fake.started.length
      // Restarts went on all through the storm (the old limit stopped the slot after 6 within a
      // minute and cooled it down for 30 s), only further apart as crashes piled up.
      expect(startedDuringStorm).toBeGreaterThan(6)
      // Once the storm ends, the pool serves again within one maximum delay (jitter included).
      yield* TestClock.adjust("12 seconds")
      expect((yield* pool.stats()).ready).toBe(1)
      expect(yield* pool.execute("echo", { value: "back" })).toBe("back")
    })
  )

  it.scoped("a slot whose workers cannot start backs off, then cools down; then it tries again", () =>
    Effect.gen(function* () {
      const broken = { now: false }
      const fake = FakeWorkers.make({
        failStart: (_attempt, workerId) =>
          broken.now
            ? new WorkerStartError({
                workerId,
                reason: "adapter_import_failed",
                detail: "ModuleNotFoundError: torch",
                tried: [],
                exitCode: 3,
                signal: null,
                stderrTail: "",
                traceback: null
              })
            : undefined
      })
      const { pool } = yield* start(
        {
          size: 1,
          restart: { baseDelay: "100 millis", maxDelay: "1 second", maxRestarts: 3, cooldown: "30 seconds" }
        },
        fake
      )
      broken.now = true
      yield* fake.started.at(-1)!.crash()
      // One restart after the crash, then failed starts 100, 200, 400 ms apart; the fourth failure
      // in a row (past maxRestarts) starts the cooldown.
      yield* TestClock.adjust("2 seconds")
      const attempts = fake.attempts
      expect(attempts).toBe(5)
      yield* TestClock.adjust("25 seconds")
      expect(fake.attempts).toBe(attempts)
      expect((yield* pool.stats()).ready).toBe(0)
      // The environment is fixed: after the cooldown the slot starts a worker again.
      broken.now = false
      yield* TestClock.adjust("6 seconds")
      expect((yield* pool.stats()).ready).toBe(1)
    })
  )

  it.scoped("missed health checks replace the worker", () =>
    Effect.gen(function* () {
      const { pool, fake } = yield* start({
        size: 1,
        healthCheck: { interval: "1 second", timeout: "500 millis", maxMisses: 3 }
      })
      fake.started[0]!.healthy = false
      // Probes at 1 s, 2.5 s and 4 s each time out after 500 ms: the third miss lands at 4.5 s.
      yield* TestClock.adjust("4400 millis")
      expect(yield* fake.started[0]!.isAlive).toBe(true)
      yield* TestClock.adjust("100 millis")
      expect(yield* fake.started[0]!.isAlive).toBe(false)
      yield* TestClock.adjust("1 second")
      expect(fake.started).toHaveLength(2)
      expect((yield* pool.workers()).map((w) => w.id)).toEqual([fake.started[1]!.id])
    })
  )

  it.scoped("TTL recycling replaces a worker on the clock, after its call finishes", () =>
    Effect.gen(function* () {
      const { pool, fake } = yield* start({ size: 1, recycle: { ttl: "1 minute" } })
      yield* TestClock.adjust("59 seconds")
      const call = yield* Effect.fork(pool.execute("sleep", { ms: 5_000 }))
      yield* TestClock.adjust("1 second")
      // Draining: the busy worker is not killed mid-call.
      expect(yield* fake.started[0]!.isAlive).toBe(true)
      yield* TestClock.adjust("4 seconds")
      expect(yield* Fiber.join(call)).toEqual({ slept_ms: 5_000 })
      yield* settle
      expect(yield* fake.started[0]!.isAlive).toBe(false)
      expect(fake.started).toHaveLength(2)
    })
  )

  it.scoped("maxCalls recycling", () =>
    Effect.gen(function* () {
      const { pool, fake } = yield* start({ size: 1, recycle: { maxCalls: 2 } })
      yield* pool.execute("echo", { value: 1 })
      yield* pool.execute("echo", { value: 2 })
      yield* settle
      expect(fake.started).toHaveLength(2)
      yield* pool.execute("echo", { value: 3 })
      expect(fake.started[1]!.calls).toHaveLength(1)
    })
  )

  it.scoped("idle sessions expire and are cleaned up in their worker", () =>
    Effect.gen(function* () {
      const { pool, fake } = yield* start({ size: 2, sessions: { ttl: "10 minutes" } })
      yield* pool.execute("echo", { value: 1 }, { session: "s" })
      const bound = fake.started.find((w) => w.calls.length === 1)!
      yield* TestClock.adjust("9 minutes")
      yield* pool.execute("echo", { value: 2 }, { session: "s" })
      expect(bound.calls).toHaveLength(2)
      yield* TestClock.adjust("9 minutes")
      expect(bound.cleanedSessions).toEqual([])
      yield* TestClock.adjust("4 minutes")
      expect(bound.cleanedSessions).toEqual(["s"])
    })
  )

  it.scoped("affinity: strict_fail_fast refuses, strict_queue waits, hint falls back", () =>
    Effect.gen(function* () {
      for (const affinity of ["strict_fail_fast", "strict_queue", "hint"] as const) {
        const { pool, fake } = yield* start({ size: 2, affinity })
        yield* pool.execute("echo", { value: 0 }, { session: "s" })
        const home = fake.started.find((w) => w.calls.length === 1)!
        const first = yield* Effect.fork(pool.execute("sleep", { ms: 100 }, { session: "s" }))
        yield* settle
        const second = yield* Effect.fork(Effect.either(pool.execute("echo", { value: 2 }, { session: "s" })))
        yield* settle
        yield* TestClock.adjust("100 millis")
        yield* Fiber.join(first)
        const outcome = yield* Fiber.join(second)
        if (affinity === "strict_fail_fast") {
          expect(Either.isLeft(outcome) && outcome.left._tag).toBe("WorkerBusy")
        } else if (affinity === "strict_queue") {
          expect(outcome).toEqual(Either.right(2))
          expect(home.calls.map((c) => c.tool)).toEqual(["echo", "sleep", "echo"])
        } else {
          expect(outcome).toEqual(Either.right(2))
          expect(home.calls.map((c) => c.tool)).toEqual(["echo", "sleep"])
        }
      }
    })
  )

  it.scoped("a session whose worker died is invalidated at once", () =>
    Effect.gen(function* () {
      for (const affinity of ["hint", "strict_queue"] as const) {
        const { pool, fake } = yield* start({ size: 2, affinity, restart: { baseDelay: "1 hour", maxDelay: "1 hour" } })
        yield* pool.execute("echo", { value: 0 }, { session: "s" })
        const home = fake.started.find((w) => w.calls.length === 1)!
        yield* home.crash()
        yield* settle
        const next = yield* Effect.either(pool.execute("echo", { value: 1 }, { session: "s" }))
        if (affinity === "hint") {
          expect(next).toEqual(Either.right(1))
        } else {
          expect(Either.isLeft(next) && next.left._tag).toBe("SessionWorkerUnavailable")
          // The stale binding is gone: the call after binds the surviving worker.
          expect(yield* pool.execute("echo", { value: 2 }, { session: "s" })).toBe(2)
        }
      }
    })
  )

  it.scoped("the layer fails with PoolStartError carrying every worker's cause", () =>
    Effect.gen(function* () {
      const fake = FakeWorkers.make({
        failStart: (_, workerId) =>
          new WorkerStartError({
            workerId,
            reason: "adapter_import_failed",
            detail: "No module named 'torch'",
            tried: [],
            exitCode: 3,
            signal: null,
            stderrTail: "",
            traceback: null
          })
      })
      const error = yield* Effect.flip(SnakepitPool.make({ size: 3 }).pipe(Effect.provide(fake.layer)))
      expect(error._tag).toBe("PoolStartError")
      if (error._tag !== "PoolStartError") return
      expect(error.causes.map((c) => c.reason)).toEqual([
        "adapter_import_failed",
        "adapter_import_failed",
        "adapter_import_failed"
      ])
    })
  )

  it.scoped("stopWorker waits for the worker's release; restartWorker returns the replacement", () =>
    Effect.gen(function* () {
      const { pool, fake } = yield* start({ size: 2 })
      const [first, second] = yield* pool.workers()
      yield* pool.stopWorker(first!.id)
      expect(yield* fake.started[0]!.isAlive).toBe(false)
      expect((yield* pool.stats()).size).toBe(1)
      const replacement = yield* pool.restartWorker(second!)
      expect(yield* fake.started[1]!.isAlive).toBe(false)
      expect(replacement.pid).not.toBe(second!.pid)
      expect((yield* Effect.flip(pool.stopWorker("nope")))._tag).toBe("WorkerNotFound")
    })
  )

  it.scoped("startup waits for every batch and honours the batch delay", () =>
    Effect.gen(function* () {
      const fake = FakeWorkers.make({ startDelay: "1 second" })
      const started = yield* Effect.fork(
        SnakepitPool.make({ size: 5, startupBatchSize: 2, startupBatchDelay: "500 millis" }).pipe(
          Effect.provide(fake.layer)
        )
      )
      yield* TestClock.adjust("1 second")
      expect(fake.started).toHaveLength(2)
      yield* TestClock.adjust("1500 millis")
      expect(fake.started).toHaveLength(4)
      yield* TestClock.adjust("1500 millis")
      const pool = yield* Fiber.join(started)
      expect((yield* pool.stats()).ready).toBe(5)
    })
  )

  it.scoped("startup is a rolling window: a slow worker does not hold back the next starts", () =>
    Effect.gen(function* () {
      // Worker 1 takes 10 s, every other 1 s; a window of 2.
      const fake = FakeWorkers.make({ startDelay: (attempt) => (attempt === 1 ? "10 seconds" : "1 second") })
      const started = yield* Effect.fork(
        SnakepitPool.make({ size: 5, startupBatchSize: 2 }).pipe(Effect.provide(fake.layer))
      )
      yield* settle
      expect(fake.started).toHaveLength(0)
      // Workers 2, 3, 4, 5 start one after the other in the second place of the window.
      yield* TestClock.adjust("4 seconds")
      expect(fake.started.map((w) => w.id)).toEqual(["default-2.1", "default-3.1", "default-4.1", "default-5.1"])
      yield* TestClock.adjust("6 seconds")
      const pool = yield* Fiber.join(started)
      expect((yield* pool.stats()).ready).toBe(5)
    })
  )

  it.scoped("two live pools of one name get distinct worker-id prefixes; a closed pool frees its prefix", () =>
    Effect.gen(function* () {
      const ids = (options: SnakepitOptions) =>
        Effect.flatMap(start(options), ({ pool }) => Effect.map(pool.workers(), (ws) => ws.map((w) => w.id)))
      expect(yield* ids({ size: 2 })).toEqual(["default-1.1", "default-2.1"])
      expect(yield* ids({ size: 1 })).toEqual(["default#2-1.1"])
      expect(yield* ids({ pools: { other: { size: 1 } } })).toEqual(["other-1.1"])
      expect(yield* Effect.scoped(ids({ size: 1 }))).toEqual(["default#3-1.1"])
      expect(yield* Effect.scoped(ids({ size: 1 }))).toEqual(["default#3-1.1"])
    })
  )

  it.scoped("calls are spans under a tracer that records them, and skip the span under the built-in one", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: 1 })
      const builtIn = yield* Effect.tracer
      const spans: Array<{ name: string; attributes: unknown }> = []
      const recording: Tracer.Tracer = {
        ...builtIn,
        span: (name, parent, context, links, startTime, kind, options) => {
          spans.push({ name, attributes: options?.attributes })
          return builtIn.span(name, parent, context, links, startTime, kind, options)
        }
      }
      expect(yield* pool.execute("echo", { value: 1 })).toBe(1)
      expect(spans).toEqual([])
      expect(yield* pool.execute("echo", { value: 2 }).pipe(Effect.withTracer(recording))).toBe(2)
      expect(spans).toEqual([{ name: "snakepit.pool.execute", attributes: { pool: "default", tool: "echo" } }])
    })
  )

  it.scoped("interrupting startup releases every worker already started", () =>
    Effect.gen(function* () {
      const fake = FakeWorkers.make({ startDelay: "1 second" })
      const gate = yield* Deferred.make<void>()
      const started = yield* Effect.fork(
        Effect.scoped(
          Effect.zipRight(
            SnakepitPool.make({ size: 4, startupBatchSize: 2 }).pipe(Effect.provide(fake.layer)),
            Deferred.await(gate)
          )
        )
      )
      yield* TestClock.adjust("1500 millis")
      expect(fake.started).toHaveLength(2)
      yield* Fiber.interrupt(started)
      expect(yield* fake.alive).toEqual([])
    })
  )

  it.scoped("stats are also Effect metrics, tagged with the pool", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ pools: { metered: { size: 2 } } })
      const requests = Metric.tagged(SnakepitMetrics.requests, "pool", "metered")
      const errors = Metric.tagged(SnakepitMetrics.errors, "pool", "metered")
      const before = (yield* Metric.value(requests)).count
      yield* pool.execute("echo", { value: 1 })
      yield* Effect.either(pool.execute("no_such_tool"))
      expect((yield* Metric.value(requests)).count - before).toBe(2)
      expect((yield* Metric.value(errors)).count).toBeGreaterThanOrEqual(1)
      expect((yield* Metric.value(Metric.tagged(SnakepitMetrics.ready, "pool", "metered"))).value).toBe(2)
      expect(yield* pool.stats("metered")).toMatchObject({ requests: 2, errors: 1, ready: 2 })
    })
  )

  it.scoped("a worker that crashes in the instant it is handed to a queued caller leaks nothing", () =>
    Effect.gen(function* () {
      const { pool, fake } = yield* start({ size: 1, restart: { baseDelay: "1 second", maxDelay: "1 second" } })
      const first = yield* Effect.fork(Effect.either(pool.execute("sleep", { ms: 100 })))
      yield* settle
      const handed = yield* Effect.fork(Effect.either(pool.execute("echo", { value: "handed" })))
      yield* settle
      // At t = 100 ms the first call ends, handing the worker over, and the worker dies.
      yield* Effect.fork(Effect.zipRight(Effect.sleep("100 millis"), fake.started[0]!.crash()))
      yield* TestClock.adjust("100 millis")
      const outcomes = [yield* Fiber.join(first)]
      // Whoever lost the race gets WorkerCrashed; a queued caller may instead wait for the replacement.
      yield* TestClock.adjust("1200 millis")
      outcomes.push(yield* Fiber.join(handed))
      for (const outcome of outcomes) {
        if (Either.isLeft(outcome)) expect(outcome.left._tag).toBe("WorkerCrashed")
      }
      expect(outcomes.some(Either.isLeft)).toBe(true)
      expect(yield* pool.stats()).toMatchObject({ busy: 0, queued: 0, ready: 1 })
      expect(yield* pool.execute("echo", { value: "recovered" })).toBe("recovered")
    })
  )

  it.scoped("a caller interrupted in the instant it is handed a worker passes the worker on", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: 1 })
      const first = yield* Effect.fork(pool.execute("sleep", { ms: 100 }))
      yield* settle
      const handed = yield* Effect.fork(pool.execute("echo", { value: "never" }))
      yield* settle
      const next = yield* Effect.fork(pool.execute("echo", { value: "next" }))
      yield* settle
      // Registered after the call's sleep, so it fires in the same instant, right after the hand-off.
      yield* Effect.fork(Effect.zipRight(Effect.sleep("100 millis"), Fiber.interrupt(handed)))
      yield* TestClock.adjust("100 millis")
      yield* Fiber.join(first)
      expect(yield* Fiber.join(next)).toBe("next")
      expect(yield* pool.stats()).toMatchObject({ busy: 0, queued: 0 })
    })
  )

  it.scoped("a stream paces its chunks on the clock and holds its worker only while it runs", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: 1 })
      const running = yield* Effect.fork(
        Stream.runCollect(pool.executeStream("stream_numbers", { count: 3, delay_ms: 100 }))
      )
      yield* TestClock.adjust("250 millis")
      expect(yield* pool.stats()).toMatchObject({ busy: 1 })
      expect(running.unsafePoll()).toBeNull()
      yield* TestClock.adjust("50 millis")
      expect(Chunk.toReadonlyArray(yield* Fiber.join(running))).toEqual([{ i: 0 }, { i: 1 }, { i: 2 }])
      expect(yield* pool.stats()).toMatchObject({ busy: 0 })
    })
  )

  it.scoped("ending a stream early, or interrupting it, returns the worker", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: 1 })
      const taken = yield* Effect.fork(
        Stream.runCollect(Stream.take(pool.executeStream("stream_numbers", { count: 1000, delay_ms: 10 }), 2))
      )
      yield* TestClock.adjust("100 millis")
      expect(Chunk.size(yield* Fiber.join(taken))).toBe(2)
      yield* settle
      expect((yield* pool.stats()).busy).toBe(0)
      const interrupted = yield* Effect.fork(
        Stream.runDrain(pool.executeStream("stream_numbers", { count: 1000, delay_ms: 10 }))
      )
      yield* TestClock.adjust("55 millis")
      yield* Fiber.interrupt(interrupted)
      yield* settle
      expect((yield* pool.stats()).busy).toBe(0)
      expect(yield* pool.execute("echo", { value: "free" })).toBe("free")
    })
  )

  it.scoped("a crash mid-stream ends it with WorkerCrashed after the chunks already sent", () =>
    Effect.gen(function* () {
      const { pool, fake } = yield* start({ size: 1 })
      const seen: Array<unknown> = []
      const running = yield* Effect.fork(
        Effect.either(
          Stream.runForEach(pool.executeStream("stream_numbers", { count: 10, delay_ms: 100 }), (chunk) =>
            Effect.sync(() => seen.push(chunk))
          )
        )
      )
      yield* TestClock.adjust("250 millis")
      yield* fake.started[0]!.crash()
      const outcome = yield* Fiber.join(running)
      expect(seen).toEqual([{ i: 0 }, { i: 1 }])
      expect(Either.isLeft(outcome) && outcome.left._tag).toBe("WorkerCrashed")
    })
  )
})
