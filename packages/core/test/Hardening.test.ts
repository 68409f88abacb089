/**
 * Issue 13 on the TestClock, with fake workers: cancellation that frees a worker only once its
 * tool stopped, safe session defaults, leases that nothing can leak.
 */
import { describe, expect, it } from "@effect/vitest"
import { FakeWorkers } from "@snakepit/testkit"
import { Duration, Effect, Exit, Fiber, Layer, Metric, Stream, TestClock } from "effect"
import {
  SnakepitMetrics,
  type SnakepitOptions,
  SnakepitPool,
  type SnakepitService,
  type Worker,
  WorkerFactory
} from "../src/index.js"

const start = (options: SnakepitOptions, fake = FakeWorkers.make()) =>
  Effect.map(SnakepitPool.make(options).pipe(Effect.provide(fake.layer)), (pool) => ({ pool, fake }))

/** Lets forked fibers run up to their next suspension. */
const settle = TestClock.adjust(Duration.zero)

const tools = { ...FakeWorkers.defaultTools, stuck: FakeWorkers.tool.stubborn("10 minutes", "too late") }

describe("cancellation frees a worker only once its tool stopped", () => {
  it.scoped("a cooperative tool that times out gives its worker back at once", () =>
    Effect.gen(function* () {
      const { pool } = yield* start({ size: 1 })
      const error = yield* Effect.flip(pool.execute("sleep", { ms: 600_000 }, { timeout: "200 millis" })).pipe(
        Effect.fork,
        Effect.tap(() => TestClock.adjust("200 millis")),
        Effect.flatMap(Fiber.join)
      )
      expect(error._tag).toBe("CallTimeout")
      yield* settle
      expect(yield* pool.stats()).toMatchObject({ busy: 0, restarts: 0 })
      expect(yield* pool.execute("echo", { value: "next" })).toBe("next")
    })
  )

  it.scoped("a tool still running `cancelGrace` after its cancel retires its worker; the queue moves on", () =>
    Effect.gen(function* () {
      const fake = FakeWorkers.make({ tools })
      const { pool } = yield* start({ size: 1, cancelGrace: "5 seconds" }, fake)
      const stuckId = fake.started[0]!.id
      const timedOut = yield* Effect.fork(Effect.flip(pool.execute("stuck", {}, { timeout: "200 millis" })))
      yield* TestClock.adjust("200 millis")
      expect((yield* Fiber.join(timedOut))._tag).toBe("CallTimeout")
      // The caller has its answer, but the worker is not handed out while the tool runs on.
      const next = yield* Effect.fork(pool.execute("echo", { value: "next" }))
      yield* TestClock.adjust("4 seconds")
      expect(next.unsafePoll()).toBeNull()
      expect((yield* pool.workers())[0]).toMatchObject({ id: stuckId, state: "busy" })
      // Past the grace: retired, replaced, and the queued call is served by the replacement.
      yield* TestClock.adjust("2 seconds")
      expect(yield* Fiber.join(next)).toBe("next")
      const workers = yield* pool.workers()
      expect(workers.map((w) => w.id)).not.toContain(stuckId)
      expect((yield* pool.stats()).restarts).toBe(1)
      const stuck = yield* Metric.value(
        SnakepitMetrics.stuckCalls.pipe(Metric.tagged("pool", "default"), Metric.tagged("tool", "stuck"))
      )
      expect(stuck.count).toBe(1)
    })
  )

  it.scoped("the seven timed-out blocking calls of the issue: the pool serves again within grace plus a restart", () =>
    Effect.gen(function* () {
      const fake = FakeWorkers.make({ tools })
      const { pool } = yield* start({ size: 1, cancelGrace: "3 seconds", restart: { baseDelay: "100 millis" } }, fake)
      const calls = yield* Effect.forEach(Array.from({ length: 7 }), () =>
        Effect.fork(Effect.flip(pool.execute("stuck", {}, { timeout: "200 millis" })))
      )
      // Each waits its turn; each stuck call holds the worker for the grace, then retires it.
      yield* TestClock.adjust("2 minutes")
      for (const call of calls) expect(["CallTimeout", "QueueTimeout"]).toContain((yield* Fiber.join(call))._tag)
      const served = yield* Effect.fork(pool.execute("echo", { value: "ok" }))
      yield* TestClock.adjust("3500 millis")
      expect(yield* Fiber.join(served)).toBe("ok")
    })
  )
})

describe("sessions are safe by default", () => {
  it.scoped("the default affinity waits for the session's worker instead of answering from another", () =>
    Effect.gen(function* () {
      const { pool, fake } = yield* start({ size: 2 })
      yield* pool.execute("echo", { value: 1 }, { session: "alice" })
      const home = fake.calls.at(-1)!.workerId
      const long = yield* Effect.fork(pool.execute("sleep", { ms: 1_000 }, { session: "alice" }))
      yield* settle
      const get = yield* Effect.fork(pool.execute("echo", { value: 2 }, { session: "alice" }))
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(long)
      expect(yield* Fiber.join(get)).toBe(2)
      // Both of alice's calls ran on her worker, though the other one was idle all along.
      expect(fake.calls.filter((c) => c.session === "alice").map((c) => c.workerId)).toEqual([home, home, home])
    })
  )

  it.scoped("hint serves a busy session elsewhere and says so to the tool, and counts it", () =>
    Effect.gen(function* () {
      const { pool, fake } = yield* start({ size: 2, affinity: "hint" })
      yield* pool.execute("echo", { value: 1 }, { session: "bob" })
      const long = yield* Effect.fork(pool.execute("sleep", { ms: 1_000 }, { session: "bob" }))
      yield* settle
      yield* pool.execute("echo", { value: 2 }, { session: "bob" })
      const [first, second, third] = fake.calls.filter((c) => c.session === "bob")
      expect(first!.sessionMoved).toBeUndefined()
      expect(second!.workerId).toBe(first!.workerId)
      expect(third!.workerId).not.toBe(first!.workerId)
      expect(third!.sessionMoved).toBe(true)
      const fallbacks = yield* Metric.value(SnakepitMetrics.sessionFallbacks.pipe(Metric.tagged("pool", "default")))
      expect(fallbacks.count).toBe(1)
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(long)
    })
  )

  it.scoped("a router can say a session moved (the cluster does): the tool is told", () =>
    Effect.gen(function* () {
      const { pool, fake } = yield* start({ size: 1 })
      yield* pool.execute("echo", { value: 1 }, { session: "carol", sessionMoved: true })
      expect(fake.calls.at(-1)!.sessionMoved).toBe(true)
    })
  )
})

describe("leases never leak", () => {
  const badOptions: ReadonlyArray<readonly [string, unknown]> = [
    ["timeout", "abc"],
    ["timeout", "infinity-ish"],
    ["timeout", {}],
    ["timeout", Number.NaN],
    ["timeout", -5],
    ["timeout", 0],
    ["buffer", 0],
    ["buffer", 1.5],
    ["session", 42],
    ["attachments", { a: "not bytes" }],
    ["attachments", "nope"],
    ["sessionMoved", "yes"]
  ]

  it.scoped("a bad call option is InvalidArguments naming it, before any worker is leased", () =>
    Effect.gen(function* () {
      const { pool, fake } = yield* start({ size: 2 })
      for (const [key, value] of badOptions) {
        const error = yield* Effect.flip(pool.execute("echo", { value: 1 }, { [key]: value } as never))
        expect(error._tag, `${key}=${String(value)}`).toBe("InvalidArguments")
        if (error._tag === "InvalidArguments") expect(error.path ?? "").toMatch(new RegExp(`^options\\.${key}`))
        const streamed = yield* Effect.flip(
          Stream.runDrain(pool.executeStream("stream_numbers", { count: 1 }, { [key]: value } as never))
        )
        expect(streamed._tag, `stream ${key}=${String(value)}`).toBe("InvalidArguments")
      }
      expect(fake.calls).toHaveLength(0)
      expect(yield* pool.stats()).toMatchObject({ busy: 0, ready: 2 })
      // Still two workers to serve two calls at once.
      const both = yield* Effect.fork(
        Effect.all([pool.execute("sleep", { ms: 10 }), pool.execute("sleep", { ms: 10 })], { concurrency: 2 })
      )
      yield* TestClock.adjust("10 millis")
      expect(yield* Fiber.join(both)).toHaveLength(2)
    })
  )

  it.scoped("a throw at any step of the call path, defects included, returns the lease", () =>
    Effect.gen(function* () {
      // A factory whose workers throw (or die) where the pool calls them.
      const fake = FakeWorkers.make()
      const faults = { mode: "none" as "none" | "throw" | "die" | "stream-throw" }
      const faulty = Layer.effect(
        WorkerFactory,
        Effect.map(WorkerFactory, (inner) => ({
          spawn: (options: Worker.WorkerOptions) =>
            Effect.map(inner.spawn(options), (worker) => ({
              ...worker,
              executeEncoded: (tool: string, args: Worker.EncodedArgs, opts?: Worker.ExecuteOptions) => {
                if (faults.mode === "throw") throw new Error("thrown while building the call")
                if (faults.mode === "die") return Effect.dieMessage("died in the call")
                return worker.executeEncoded(tool, args, opts)
              },
              executeStream: (tool: string, args: Worker.EncodedArgs, opts?: Worker.StreamOptions) => {
                if (faults.mode === "stream-throw") throw new Error("thrown while building the stream")
                return worker.executeStream(tool, args, opts)
              }
            }))
        }))
      ).pipe(Layer.provide(fake.layer))
      const pool: SnakepitService = yield* SnakepitPool.make({ size: 1 }).pipe(Effect.provide(faulty))
      for (const mode of ["throw", "die"] as const) {
        faults.mode = mode
        const exit = yield* Effect.exit(pool.execute("echo", { value: 1 }))
        expect(Exit.isFailure(exit), mode).toBe(true)
        expect((yield* pool.stats()).busy, mode).toBe(0)
      }
      faults.mode = "stream-throw"
      const streamExit = yield* Effect.exit(Stream.runDrain(pool.executeStream("stream_numbers", { count: 2 })))
      expect(Exit.isFailure(streamExit)).toBe(true)
      yield* settle
      faults.mode = "none"
      expect((yield* pool.stats()).busy).toBe(0)
      expect(yield* pool.execute("echo", { value: "still serving" })).toBe("still serving")
    })
  )
})
