import { spawn } from "node:child_process"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { RunId } from "@snakepit/registry"
import { Processes } from "@snakepit/testkit"
import { Cause, ConfigProvider, Context, Duration, Effect, Exit, Fiber, Layer, Option, Schedule, Scope } from "effect"
import {
  createPool,
  PoolClosed,
  PythonError,
  Snakepit,
  type SnakepitOptions,
  SnakepitPool,
  type SnakepitService,
  WorkerFactory
} from "../src/index.js"

const fixtures = fileURLToPath(new URL("./fixtures/python", import.meta.url))

/**
 * Runs `body` with a fresh run id (the `RunId` service the workers read when they spawn), then
 * proves that no process of that run was alive once the body's scope had closed.
 */
const withRun = <A, E>(body: (runId: string) => Effect.Effect<A, E, Scope.Scope>) =>
  Effect.gen(function* () {
    const runId = RunId.generate()
    const exit = yield* body(runId).pipe(Effect.scoped, Effect.provide(RunId.RunId.fixed(runId)), Effect.exit)
    // Closing the pool's scope completes only once its processes are gone: nothing may be left.
    const leftover = Processes.processesOfRun(runId)
    yield* Processes.awaitRunGone(runId)
    const value = yield* exit
    expect(leftover, "processes alive after the pool's scope closed").toEqual([])
    return value
  })

const startPool = (options: SnakepitOptions) => SnakepitPool.make(options).pipe(Effect.provide(WorkerFactory.node))

/** Starts a pool in the run's scope and hands it to `body`. */
const withPool = <A, E>(
  options: SnakepitOptions,
  body: (pool: SnakepitService, runId: string) => Effect.Effect<A, E, Scope.Scope>
) => withRun((runId) => Effect.flatMap(startPool(options), (pool) => body(pool, runId)))

/** Polls `check` until it yields true; a bounded wait on a real condition. */
const eventually = <E>(
  what: string,
  check: Effect.Effect<boolean, E>,
  timeout: Duration.DurationInput = "15 seconds"
) =>
  check.pipe(
    Effect.filterOrFail(
      (ok) => ok,
      () => new Error(what)
    ),
    Effect.retry(Schedule.spaced(Duration.millis(25))),
    Effect.timeoutFail({ duration: timeout, onTimeout: () => new Error(`timed out after ${timeout}: ${what}`) }),
    Effect.orDie
  )

const pids = (pool: SnakepitService, name?: string) =>
  Effect.map(pool.workers(name), (workers) => workers.map((w) => w.pid))

/** Waits until the pool is back to `ready` serving workers, none of them `gonePid`. */
const awaitReplaced = (pool: SnakepitService, gonePid: number, ready: number) =>
  eventually(
    `worker ${gonePid} replaced`,
    Effect.zipWith(pool.workers(), pool.stats(), (workers, stats) => {
      return stats.ready === ready && workers.every((w) => w.pid !== gonePid && w.state !== "stopping")
    })
  )

/** Waits until `n` workers are serving a call. */
const awaitBusy = (pool: SnakepitService, n: number) =>
  eventually(
    `${n} busy workers`,
    Effect.map(pool.stats(), (s) => s.busy === n)
  )

const ping = (pool: SnakepitService, options?: Parameters<SnakepitService["execute"]>[2]) =>
  Effect.map(pool.execute("ping", {}, options), (r) => (r as { pid: number }).pid)

describe("SnakepitPool", () => {
  it.live("starts `size` distinct workers, all ready, in the run of the RunId service", () =>
    withPool({ size: 3 }, (pool, runId) =>
      Effect.gen(function* () {
        yield* pool.awaitReady().pipe(Effect.timeout("10 seconds"))
        const workers = yield* pool.workers()
        expect(workers).toHaveLength(3)
        expect(new Set(workers.map((w) => w.pid)).size).toBe(3)
        expect(new Set(workers.map((w) => w.id)).size).toBe(3)
        for (const w of workers) {
          expect(Processes.isAlive(w.pid)).toBe(true)
          expect(w).toMatchObject({ pool: "default", state: "ready", calls: 0 })
        }
        // The workers were spawned with the run id of the RunId service provided around `make`.
        const ofRun = Processes.processesOfRun(runId).map(([pid]) => pid)
        expect(ofRun.sort()).toEqual(workers.map((w) => w.pid).sort())
        expect(pool.pools).toEqual(["default"])
        expect(yield* pool.stats()).toEqual({
          pool: "default",
          size: 3,
          ready: 3,
          busy: 0,
          queued: 0,
          requests: 0,
          errors: 0,
          queueTimeouts: 0,
          restarts: 0
        })
      })
    )
  )

  it.live("Layer.provide(layer, RunId.fixed) also reaches the workers", () =>
    Effect.gen(function* () {
      const runId = RunId.generate()
      const exit = yield* Effect.gen(function* () {
        const context = yield* Layer.build(Layer.provide(SnakepitPool.layer({ size: 1 }), RunId.RunId.fixed(runId)))
        const pool = Context.get(context, Snakepit)
        const [pid] = yield* pids(pool)
        expect(Processes.processesOfRun(runId).map(([p]) => p)).toEqual([pid])
      }).pipe(Effect.scoped, Effect.exit)
      expect(Processes.processesOfRun(runId)).toEqual([])
      return yield* exit
    })
  )

  describe("startup failures", () => {
    it.live("PoolStartError carries every worker's WorkerStartError", () =>
      withRun(() =>
        Effect.gen(function* () {
          const error = yield* Effect.flip(startPool({ size: 2, adapter: "failing_start", pythonPath: [fixtures] }))
          expect(error._tag).toBe("PoolStartError")
          if (error._tag !== "PoolStartError") return
          expect(error.pool).toBe("default")
          expect(error.causes).toHaveLength(2)
          for (const cause of error.causes) {
            expect(cause._tag).toBe("WorkerStartError")
            expect(cause.reason).toBe("adapter_start_failed")
            expect(cause.traceback).toContain("model weights not found")
          }
          expect(new Set(error.causes.map((c) => c.workerId)).size).toBe(2)
          expect(error.message).toContain("adapter_start_failed")
        })
      )
    )

    it.live("one named pool failing to start stops the others", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const error = yield* Effect.flip(
            startPool({
              pools: {
                ok: { size: 1 },
                bad: { size: 1, adapter: "failing_start", pythonPath: [fixtures], restart: { baseDelay: "2 seconds" } }
              }
            }).pipe(
              // Hold the failure until the healthy pool's worker is up, so its stop is what is checked.
              Effect.tapError(() =>
                Processes.awaitCondition(
                  "the healthy worker spawned",
                  () => Processes.processesOfRun(runId).length >= 1
                ).pipe(Effect.orDie)
              )
            )
          )
          expect(error._tag).toBe("PoolStartError")
          if (error._tag === "PoolStartError") expect(error.pool).toBe("bad")
          // withRun proves the healthy pool's worker did not outlive the failed start.
        })
      )
    )

    it.live("minReady: the pool starts with fewer workers and keeps retrying the others", () =>
      withRun(() =>
        Effect.gen(function* () {
          const options = (lock: string): SnakepitOptions => ({
            size: 2,
            adapter: "one_ready_start",
            pythonPath: [fixtures],
            env: { SNAKEPIT_TEST_LOCK: lock },
            restart: { baseDelay: "200 millis" }
          })
          // Without minReady every worker must start: one of the two cannot.
          const lock1 = join(mkdtempSync(join(tmpdir(), "snakepit-pool-")), "lock")
          const error = yield* Effect.flip(Effect.scoped(startPool(options(lock1))))
          expect(error._tag).toBe("PoolStartError")
          if (error._tag === "PoolStartError") {
            expect(error.causes).toHaveLength(1)
            expect(error.causes[0]!.reason).toBe("adapter_start_failed")
          }
          // minReady 1: the layer starts with the one that can.
          const lock2 = join(mkdtempSync(join(tmpdir(), "snakepit-pool-")), "lock")
          const pool = yield* startPool({ ...options(lock2), minReady: 1 })
          const stats = yield* pool.stats()
          expect(stats).toMatchObject({ size: 2, ready: 1 })
          expect(yield* pool.execute("ping")).toMatchObject({ message: "pong" })
          // The failed slot is retried in the background.
          yield* eventually(
            "the failed slot retried",
            Effect.map(pool.stats(), (s) => s.restarts >= 2)
          )
        })
      )
    )

    it.live("a worker not ready within startupTimeout fails the pool; its grandchild is stopped too", () =>
      withRun(() =>
        Effect.gen(function* () {
          const started = Date.now()
          const error = yield* Effect.flip(
            startPool({ size: 1, adapter: "slow_start", pythonPath: [fixtures], startupTimeout: "1 second" })
          )
          expect(error._tag).toBe("PoolStartError")
          if (error._tag === "PoolStartError") expect(error.causes.map((c) => c.reason)).toEqual(["startup_timeout"])
          expect(Date.now() - started).toBeLessThan(5000)
        })
      )
    )

    it.live("interrupting startup stops every worker already spawned (grandchildren included)", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const fiber = yield* Effect.fork(
            Effect.scoped(startPool({ size: 3, adapter: "slow_start", pythonPath: [fixtures] }))
          )
          // Three workers, each with a grandchild, all carrying the run id.
          yield* Processes.awaitCondition(
            "3 workers and 3 grandchildren",
            () => Processes.processesOfRun(runId).length >= 6
          )
          const spawned = Processes.processesOfRun(runId).map(([pid]) => pid)
          yield* Fiber.interrupt(fiber)
          expect(spawned.filter(Processes.isAlive)).toEqual([])
        })
      )
    )

    it.live("interrupting between startup batches stops the workers already ready", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const fiber = yield* Effect.fork(
            Effect.scoped(startPool({ size: 3, startupBatchSize: 1, startupBatchDelay: "20 seconds" }))
          )
          yield* Processes.awaitCondition("first worker spawned", () => Processes.processesOfRun(runId).length >= 1)
          const spawned = Processes.processesOfRun(runId).map(([pid]) => pid)
          expect(spawned).toHaveLength(1)
          yield* Fiber.interrupt(fiber)
          expect(spawned.filter(Processes.isAlive)).toEqual([])
        })
      )
    )
  })

  describe("calls", () => {
    it.live("6 concurrent calls on 2 workers all succeed and are counted", () =>
      withPool({ size: 2 }, (pool) =>
        Effect.gen(function* () {
          const results = yield* Effect.forEach([1, 2, 3, 4, 5, 6], (n) => pool.execute("add", { a: n, b: 100 }), {
            concurrency: 6
          })
          expect(results).toEqual([101, 102, 103, 104, 105, 106])
          const stats = yield* pool.stats()
          expect(stats).toMatchObject({ requests: 6, errors: 0, busy: 0, queued: 0, ready: 2 })
          const workers = yield* pool.workers()
          expect(workers.reduce((sum, w) => sum + w.calls, 0)).toBe(6)
        })
      )
    )

    it.live("queue.max: one waits, the next is QueueFull at once", () =>
      withPool({ size: 1, queue: { max: 1 } }, (pool) =>
        Effect.gen(function* () {
          const first = yield* Effect.fork(pool.execute("sleep", { ms: 1500 }))
          yield* awaitBusy(pool, 1)
          const second = yield* Effect.fork(pool.execute("add", { a: 1, b: 2 }))
          yield* eventually(
            "one caller queued",
            Effect.map(pool.stats(), (s) => s.queued === 1)
          )
          const started = Date.now()
          const full = yield* Effect.flip(pool.execute("add", { a: 3, b: 4 }))
          expect(Date.now() - started).toBeLessThan(500)
          expect(full._tag).toBe("QueueFull")
          if (full._tag === "QueueFull") expect(full).toMatchObject({ pool: "default", max: 1 })
          expect(second.unsafePoll()).toBeNull()
          expect(yield* Fiber.join(first)).toEqual({ slept_ms: 1500 })
          expect(yield* Fiber.join(second)).toBe(3)
          expect(yield* pool.stats()).toMatchObject({ requests: 3, errors: 1, queued: 0, queueTimeouts: 0 })
        })
      )
    )

    it.live("an interrupted queued caller leaves the queue and leaks no capacity", () =>
      withPool({ size: 1 }, (pool) =>
        Effect.gen(function* () {
          const first = yield* Effect.fork(pool.execute("sleep", { ms: 600 }))
          yield* awaitBusy(pool, 1)
          const queued = yield* Effect.fork(pool.execute("add", { a: 1, b: 1 }))
          yield* eventually(
            "one caller queued",
            Effect.map(pool.stats(), (s) => s.queued === 1)
          )
          yield* Fiber.interrupt(queued)
          expect((yield* pool.stats()).queued).toBe(0)
          yield* Fiber.join(first)
          expect(yield* pool.execute("add", { a: 2, b: 2 }).pipe(Effect.timeout("5 seconds"))).toBe(4)
          expect(yield* pool.stats()).toMatchObject({ busy: 0, queued: 0 })
        })
      )
    )

    it.live("a queued caller is served by the replacement when the only worker crashes", () =>
      withPool({ size: 1 }, (pool) =>
        Effect.gen(function* () {
          const [pid] = yield* pids(pool)
          const crashing = yield* Effect.fork(pool.execute("crash", { code: 5 }))
          yield* eventually(
            "the crash call holds the worker",
            Effect.map(pool.stats(), (s) => s.busy === 1 || crashing.unsafePoll() !== null)
          )
          const queued = yield* Effect.fork(ping(pool))
          const error = yield* Effect.flip(Fiber.join(crashing))
          expect(error._tag).toBe("WorkerCrashed")
          const served = yield* Fiber.join(queued)
          expect(served).not.toBe(pid)
          expect(yield* pids(pool)).toEqual([served])
        })
      )
    )

    it.live("queue.timeout: a caller that waits too long gets QueueTimeout", () =>
      withPool({ size: 1, queue: { timeout: "300 millis" } }, (pool) =>
        Effect.gen(function* () {
          const first = yield* Effect.fork(pool.execute("sleep", { ms: 1500 }))
          yield* awaitBusy(pool, 1)
          const started = Date.now()
          const error = yield* Effect.flip(pool.execute("add", { a: 1, b: 2 }))
          const waited = Date.now() - started
          expect(error._tag).toBe("QueueTimeout")
          if (error._tag === "QueueTimeout") expect(error.timeoutMs).toBe(300)
          expect(waited).toBeGreaterThanOrEqual(250)
          expect(waited).toBeLessThan(1400)
          expect(yield* pool.stats()).toMatchObject({ queueTimeouts: 1, queued: 0 })
          expect(yield* Fiber.join(first)).toEqual({ slept_ms: 1500 })
          expect(yield* pool.execute("add", { a: 1, b: 2 })).toBe(3)
        })
      )
    )

    it.live("callTimeout and a per-call timeout give CallTimeout; the pool keeps serving", () =>
      withPool({ size: 1, callTimeout: "400 millis" }, (pool) =>
        Effect.gen(function* () {
          const [pid] = yield* pids(pool)
          const byPool = yield* Effect.flip(pool.execute("sleep", { ms: 3000 }))
          expect(byPool._tag).toBe("CallTimeout")
          if (byPool._tag === "CallTimeout") expect(byPool.timeoutMs).toBe(400)
          const byCall = yield* Effect.flip(pool.execute("sleep", { ms: 3000 }, { timeout: "300 millis" }))
          expect(byCall._tag).toBe("CallTimeout")
          if (byCall._tag === "CallTimeout") expect(byCall.timeoutMs).toBe(300)
          // A longer per-call timeout overrides the pool's.
          expect(yield* pool.execute("sleep", { ms: 600 }, { timeout: "5 seconds" })).toEqual({ slept_ms: 600 })
          expect(yield* pool.execute("add", { a: 20, b: 22 })).toBe(42)
          // The worker answered its health probes: it was kept.
          expect(yield* pids(pool)).toEqual([pid])
          expect(yield* pool.stats()).toMatchObject({ requests: 4, errors: 2, restarts: 0 })
        })
      )
    )

    it.live("capacity: one worker serves two calls at once, a third waits", () =>
      withPool({ size: 1, capacity: 2 }, (pool) =>
        Effect.gen(function* () {
          const started = Date.now()
          const two = yield* Effect.fork(
            Effect.all([pool.execute("sleep", { ms: 700 }), pool.execute("sleep", { ms: 700 })], { concurrency: 2 })
          )
          yield* eventually(
            "two calls on the one worker",
            Effect.map(pool.workers(), (ws) => ws[0]?.state === "busy")
          )
          const third = yield* Effect.fork(pool.execute("add", { a: 1, b: 1 }))
          yield* eventually(
            "the third caller queued",
            Effect.map(pool.stats(), (s) => s.queued === 1)
          )
          expect(yield* Fiber.join(two)).toEqual([{ slept_ms: 700 }, { slept_ms: 700 }])
          // Both ran at once: one after the other would take at least 1400 ms.
          expect(Date.now() - started).toBeLessThan(1300)
          expect(yield* Fiber.join(third)).toBe(2)
        })
      )
    )

    it.live("bad input keeps the pool serving: ToolNotFound, InvalidArguments, PythonError", () =>
      withPool({ size: 1 }, (pool) =>
        Effect.gen(function* () {
          const [pid] = yield* pids(pool)
          const notFound = yield* Effect.flip(pool.execute("no_such_tool", {}))
          expect(notFound._tag).toBe("ToolNotFound")
          if (notFound._tag === "ToolNotFound") {
            expect(notFound.available).toEqual(expect.arrayContaining(["ping", "add", "sleep"]))
          }
          const invalid = yield* Effect.flip(pool.execute("echo", { value: 10n }))
          expect(invalid._tag).toBe("InvalidArguments")
          if (invalid._tag === "InvalidArguments") expect(invalid.path).toBe("args.value")
          const missing = yield* Effect.flip(pool.execute("add", { a: 1 }))
          expect(missing._tag).toBe("InvalidArguments")
          const python = yield* Effect.flip(pool.execute("fail", { type: "KeyError", message: "nope" }))
          expect(python._tag).toBe("PythonError")
          if (python._tag === "PythonError") {
            expect(python.type).toBe("KeyError")
            expect(python.traceback).toContain("KeyError")
          }
          expect(yield* pool.execute("add", { a: 1, b: 2 })).toBe(3)
          expect(yield* pids(pool)).toEqual([pid])
          expect(yield* pool.stats()).toMatchObject({ requests: 5, errors: 4, restarts: 0, ready: 1 })
        })
      )
    )
  })

  describe("crashes", () => {
    it.live("a crash is WorkerCrashed, other callers are unaffected, and the slot is restarted", () =>
      withPool({ size: 2 }, (pool) =>
        Effect.gen(function* () {
          const before = yield* pids(pool)
          const busy = yield* Effect.fork(pool.execute("sleep", { ms: 1000 }))
          yield* awaitBusy(pool, 1)
          const busyPid = (yield* pool.workers()).find((w) => w.state === "busy")!.pid
          const idlePid = before.find((p) => p !== busyPid)!
          const error = yield* Effect.flip(pool.execute("crash", { code: 3 }))
          expect(error._tag).toBe("WorkerCrashed")
          if (error._tag === "WorkerCrashed") {
            expect(error).toMatchObject({ exitCode: 3, signal: null, pid: idlePid, tool: "crash" })
          }
          expect(yield* Fiber.join(busy)).toEqual({ slept_ms: 1000 })
          yield* awaitReplaced(pool, idlePid, 2)
          const after = yield* pids(pool)
          expect(after).toContain(busyPid)
          expect(after).toHaveLength(2)
          expect(Processes.isAlive(idlePid)).toBe(false)
          const stats = yield* pool.stats()
          expect(stats.restarts).toBeGreaterThanOrEqual(1)
          expect(stats).toMatchObject({ size: 2, ready: 2 })
          expect(yield* pool.execute("add", { a: 1, b: 1 })).toBe(2)
        })
      )
    )
  })

  describe("sessions", () => {
    it.live("hint: a session sticks to its worker, and moves when the worker dies", () =>
      withPool({ size: 2, affinity: "hint" }, (pool) =>
        Effect.gen(function* () {
          const seen = yield* Effect.forEach([1, 2, 3, 4, 5], () => ping(pool, { session: "s" }))
          expect(new Set(seen).size).toBe(1)
          const pid = seen[0]!
          yield* pool.execute("session_put", { key: "k", value: { n: 1 } }, { session: "s" })
          expect(yield* pool.execute("session_get", { key: "k" }, { session: "s" })).toEqual({ n: 1 })
          expect(yield* pool.execute("session_get", { key: "k" }, { session: "other" })).toBeNull()
          process.kill(pid, "SIGKILL")
          yield* awaitReplaced(pool, pid, 2)
          const moved = yield* ping(pool, { session: "s" })
          expect(moved).not.toBe(pid)
          expect(yield* pids(pool)).toContain(moved)
          expect(yield* ping(pool, { session: "s" })).toBe(moved)
        })
      )
    )

    it.live("sessions.max: the least recently used session is evicted and its state dropped", () =>
      withPool({ size: 1, sessions: { max: 1 } }, (pool) =>
        Effect.gen(function* () {
          yield* pool.execute("session_put", { key: "k", value: "a's" }, { session: "a" })
          expect(yield* pool.execute("session_get", { key: "k" }, { session: "a" })).toBe("a's")
          // A second session evicts the first; its state is cleaned up in the worker.
          yield* pool.execute("session_put", { key: "k", value: "b's" }, { session: "b" })
          yield* eventually(
            "session a's state dropped",
            Effect.map(pool.execute("session_get", { key: "k" }, { session: "a" }), (v) => v === null)
          )
        })
      )
    )

    it.live("strict_fail_fast: a call for a busy session worker is WorkerBusy", () =>
      withPool({ size: 2, affinity: "strict_fail_fast" }, (pool) =>
        Effect.gen(function* () {
          const pid = yield* ping(pool, { session: "s" })
          const long = yield* Effect.fork(pool.execute("sleep", { ms: 1000 }, { session: "s" }))
          yield* awaitBusy(pool, 1)
          const error = yield* Effect.flip(pool.execute("ping", {}, { session: "s" }))
          expect(error._tag).toBe("WorkerBusy")
          if (error._tag === "WorkerBusy") expect(error.session).toBe("s")
          // Without a session the other worker serves.
          expect(yield* ping(pool)).not.toBe(pid)
          expect(yield* Fiber.join(long)).toEqual({ slept_ms: 1000 })
          expect(yield* ping(pool, { session: "s" })).toBe(pid)
        })
      )
    )

    it.live("strict_queue: a call waits for its session's worker even when another is idle", () =>
      withPool({ size: 2, affinity: "strict_queue" }, (pool) =>
        Effect.gen(function* () {
          const pid = yield* ping(pool, { session: "s" })
          const long = yield* Effect.fork(pool.execute("sleep", { ms: 800 }, { session: "s" }))
          yield* awaitBusy(pool, 1)
          const second = yield* ping(pool, { session: "s" })
          expect(second).toBe(pid)
          // It was served only after the long call released the worker.
          expect(long.unsafePoll()).not.toBeNull()
          expect(yield* Fiber.join(long)).toEqual({ slept_ms: 800 })
        })
      )
    )

    it.live("strict: a dead session worker is SessionWorkerUnavailable once, then the session rebinds", () =>
      withPool({ size: 2, affinity: "strict_queue" }, (pool) =>
        Effect.gen(function* () {
          const pid = yield* ping(pool, { session: "s" })
          process.kill(pid, "SIGKILL")
          yield* awaitReplaced(pool, pid, 2)
          const error = yield* Effect.flip(pool.execute("ping", {}, { session: "s" }))
          expect(error._tag).toBe("SessionWorkerUnavailable")
          if (error._tag === "SessionWorkerUnavailable") {
            expect(error.session).toBe("s")
            expect(error.reason).toContain("SIGKILL")
          }
          const rebound = yield* ping(pool, { session: "s" })
          expect(rebound).not.toBe(pid)
          expect(yield* ping(pool, { session: "s" })).toBe(rebound)
        })
      )
    )

    it.live("strict_queue: a caller waiting for a worker that dies gets SessionWorkerUnavailable", () =>
      withPool({ size: 2, affinity: "strict_queue" }, (pool) =>
        Effect.gen(function* () {
          const pid = yield* ping(pool, { session: "s" })
          const long = yield* Effect.fork(pool.execute("sleep", { ms: 30_000 }, { session: "s" }))
          yield* awaitBusy(pool, 1)
          const waiting = yield* Effect.fork(pool.execute("ping", {}, { session: "s" }))
          yield* eventually(
            "the second caller queued",
            Effect.map(pool.stats(), (s) => s.queued === 1)
          )
          process.kill(pid, "SIGKILL")
          const crashed = yield* Effect.flip(Fiber.join(long))
          expect(crashed._tag).toBe("WorkerCrashed")
          const unavailable = yield* Effect.flip(Fiber.join(waiting))
          expect(unavailable._tag).toBe("SessionWorkerUnavailable")
          if (unavailable._tag === "SessionWorkerUnavailable") expect(unavailable.session).toBe("s")
          yield* awaitReplaced(pool, pid, 2)
        })
      )
    )
  })

  describe("lifecycle", () => {
    it.live("stopWorker: the process is gone when it completes, and the pool shrinks", () =>
      withPool({ size: 2 }, (pool) =>
        Effect.gen(function* () {
          const [first, second] = yield* pool.workers()
          yield* pool.stopWorker(first!.id)
          expect(Processes.isAlive(first!.pid)).toBe(false)
          const workers = yield* pool.workers()
          expect(workers.map((w) => w.id)).toEqual([second!.id])
          // A stop is not a restart.
          expect(yield* pool.stats()).toMatchObject({ size: 1, ready: 1, restarts: 0 })
          yield* pool.awaitReady().pipe(Effect.timeout("5 seconds"))
          // It stays stopped: not replaced.
          expect(yield* pool.execute("add", { a: 1, b: 1 })).toBe(2)
          expect((yield* pool.workers()).map((w) => w.id)).toEqual([second!.id])
          const notFound = yield* Effect.flip(pool.stopWorker(first!.id))
          expect(notFound._tag).toBe("WorkerNotFound")
          const nope = yield* Effect.flip(pool.stopWorker("nope"))
          expect(nope._tag).toBe("WorkerNotFound")
          if (nope._tag === "WorkerNotFound") expect(nope.workerId).toBe("nope")
          const nopeRestart = yield* Effect.flip(pool.restartWorker({ id: "nope" }))
          expect(nopeRestart._tag).toBe("WorkerNotFound")
        })
      )
    )

    it.live("stopWorker waits for the call in flight, then the process is gone", () =>
      withPool({ size: 2 }, (pool) =>
        Effect.gen(function* () {
          const call = yield* Effect.fork(pool.execute("sleep", { ms: 800 }))
          yield* awaitBusy(pool, 1)
          const busy = (yield* pool.workers()).find((w) => w.state === "busy")!
          yield* pool.stopWorker(busy)
          expect(call.unsafePoll()).not.toBeNull()
          expect(yield* Fiber.join(call)).toEqual({ slept_ms: 800 })
          expect(Processes.isAlive(busy.pid)).toBe(false)
          expect(yield* pool.stats()).toMatchObject({ size: 1, ready: 1 })
        })
      )
    )

    it.live("restartWorker fails with the replacement's WorkerStartError; the slot keeps retrying", () =>
      withPool(
        {
          size: 1,
          adapter: "one_ready_start",
          pythonPath: [fixtures],
          env: { SNAKEPIT_TEST_LOCK: join(mkdtempSync(join(tmpdir(), "snakepit-pool-")), "lock") },
          restart: { baseDelay: "100 millis", maxDelay: "300 millis" }
        },
        (pool) =>
          Effect.gen(function* () {
            const [old] = yield* pool.workers()
            // The first worker holds the lock: its replacement cannot start.
            const error = yield* Effect.flip(pool.restartWorker(old!.id))
            expect(error._tag).toBe("WorkerStartError")
            if (error._tag === "WorkerStartError") expect(error.reason).toBe("adapter_start_failed")
            expect(Processes.isAlive(old!.pid)).toBe(false)
            expect(yield* pool.stats()).toMatchObject({ size: 1, ready: 0 })
            yield* eventually(
              "the slot retried after the failed start",
              Effect.map(pool.stats(), (s) => s.restarts >= 2)
            )
          })
      )
    )

    // Both wait for the real release; when the pool closes meanwhile they must still complete.
    it.live("a stopWorker or restartWorker pending when the pool closes completes", () =>
      withRun(() =>
        Effect.gen(function* () {
          const scope = yield* Scope.make()
          const pool = yield* startPool({ size: 2, gracefulTimeout: "300 millis" }).pipe(Scope.extend(scope))
          const [a, b] = yield* pool.workers()
          // Both workers busy, so both retirements wait for a drain.
          const calls = yield* Effect.fork(
            Effect.all([pool.execute("sleep", { ms: 5000 }), pool.execute("sleep", { ms: 5000 })], {
              concurrency: 2,
              mode: "either"
            })
          )
          yield* awaitBusy(pool, 2)
          const stopping = yield* Effect.fork(pool.stopWorker(a!.id))
          const restarting = yield* Effect.fork(pool.restartWorker(b!))
          yield* eventually(
            "both workers are retiring",
            Effect.map(pool.workers(), (ws) => ws.length === 2 && ws.every((w) => w.state === "stopping"))
          )
          yield* Scope.close(scope, Exit.void)
          expect([a!.pid, b!.pid].filter(Processes.isAlive)).toEqual([])
          yield* Fiber.join(calls)
          // The processes are gone: neither may wait forever (any outcome will do).
          const stopped = yield* Fiber.await(stopping).pipe(Effect.timeout("2 seconds"), Effect.option)
          const restarted = yield* Fiber.await(restarting).pipe(Effect.timeout("1 second"), Effect.option)
          yield* Fiber.interrupt(stopping)
          yield* Fiber.interrupt(restarting)
          expect(Option.isSome(stopped), "stopWorker still pending after the pool closed").toBe(true)
          expect(Option.isSome(restarted), "restartWorker still pending after the pool closed").toBe(true)
          if (Option.isSome(restarted)) {
            expect(Exit.isFailure(restarted.value) && Cause.failureOption(restarted.value.cause)).toEqual(
              Option.some(expect.objectContaining({ _tag: "PoolClosed" }))
            )
          }
        })
      )
    )

    it.live("closing the pool fails queued callers with PoolClosed and later calls too", () =>
      withRun(() =>
        Effect.gen(function* () {
          const scope = yield* Scope.make()
          const pool = yield* startPool({ size: 1, gracefulTimeout: "300 millis" }).pipe(Scope.extend(scope))
          const [worker] = yield* pool.workers()
          yield* Effect.fork(pool.execute("sleep", { ms: 5000 }))
          yield* awaitBusy(pool, 1)
          const queued = yield* Effect.fork(pool.execute("add", { a: 1, b: 1 }))
          yield* eventually(
            "one caller queued",
            Effect.map(pool.stats(), (s) => s.queued === 1)
          )
          yield* Scope.close(scope, Exit.void)
          expect(Processes.isAlive(worker!.pid)).toBe(false)
          const closed = yield* Effect.flip(Fiber.join(queued))
          expect(closed._tag).toBe("PoolClosed")
          expect((yield* Effect.flip(pool.execute("add", { a: 1, b: 1 })))._tag).toBe("PoolClosed")
        })
      )
    )

    it.live("restartWorker(handle): drains the call in flight, old process gone, new worker returned", () =>
      withPool({ size: 1 }, (pool) =>
        Effect.gen(function* () {
          const [old] = yield* pool.workers()
          const call = yield* Effect.fork(pool.execute("sleep", { ms: 800 }))
          yield* awaitBusy(pool, 1)
          const fresh = yield* pool.restartWorker(old!)
          expect(Processes.isAlive(old!.pid)).toBe(false)
          // Drained, not killed: the call in flight finished.
          expect(yield* Fiber.join(call)).toEqual({ slept_ms: 800 })
          expect(fresh.pid).not.toBe(old!.pid)
          expect(fresh.id).not.toBe(old!.id)
          expect(fresh.state).toBe("ready")
          expect(Processes.isAlive(fresh.pid)).toBe(true)
          expect(yield* pids(pool)).toEqual([fresh.pid])
          expect(yield* ping(pool)).toBe(fresh.pid)
          expect((yield* pool.stats()).restarts).toBe(1)
        })
      )
    )
  })

  describe("health", () => {
    it.live("a frozen worker (SIGSTOP) misses its health checks and is replaced", () =>
      withPool(
        {
          size: 1,
          gracefulTimeout: "300 millis",
          healthCheck: { interval: "200 millis", timeout: "200 millis", maxMisses: 2 }
        },
        (pool) =>
          Effect.gen(function* () {
            const [pid] = yield* pids(pool)
            process.kill(pid!, "SIGSTOP")
            yield* awaitReplaced(pool, pid!, 1)
            expect(Processes.isAlive(pid!)).toBe(false)
            expect((yield* pool.stats()).restarts).toBe(1)
            expect(yield* pool.execute("add", { a: 1, b: 1 })).toBe(2)
          })
      )
    )

    it.live("a call timeout on a worker that then fails its probe retires the worker", () =>
      withPool(
        { size: 1, gracefulTimeout: "300 millis", healthCheck: { interval: "30 seconds", timeout: "200 millis" } },
        (pool) =>
          Effect.gen(function* () {
            const [pid] = yield* pids(pool)
            process.kill(pid!, "SIGSTOP")
            const error = yield* Effect.flip(pool.execute("add", { a: 1, b: 1 }, { timeout: "300 millis" }))
            expect(error._tag).toBe("CallTimeout")
            // Retired at once, without waiting for the (30 s) periodic health check.
            yield* awaitReplaced(pool, pid!, 1)
            expect(Processes.isAlive(pid!)).toBe(false)
            expect(yield* ping(pool)).not.toBe(pid)
          })
      )
    )
  })

  describe("recycling", () => {
    it.live("recycle.maxCalls: after 3 calls the next is served by a new worker", () =>
      withPool({ size: 1, recycle: { maxCalls: 3 } }, (pool) =>
        Effect.gen(function* () {
          const first = yield* Effect.forEach([1, 2, 3], () => ping(pool))
          expect(new Set(first).size).toBe(1)
          const next = yield* ping(pool)
          expect(next).not.toBe(first[0])
          yield* Processes.awaitGone([first[0]!])
          expect((yield* pool.stats()).restarts).toBe(1)
        })
      )
    )

    it.live("recycle.maxRssMb: a worker holding too much memory is replaced", () =>
      withPool({ size: 1, recycle: { maxRssMb: 80 }, healthCheck: { interval: "200 millis" } }, (pool) =>
        Effect.gen(function* () {
          const [pid] = yield* pids(pool)
          // Below the limit at rest: it survives a few health checks.
          yield* Effect.sleep("600 millis")
          expect(yield* pids(pool)).toEqual([pid])
          expect(yield* pool.execute("hog", { mb: 120 })).toEqual({ held_mb: 120 })
          yield* awaitReplaced(pool, pid!, 1)
          expect(Processes.isAlive(pid!)).toBe(false)
          expect((yield* pool.stats()).restarts).toBe(1)
        })
      )
    )

    it.live("recycle.ttl: a busy worker is drained, not killed", () =>
      withPool({ size: 1, recycle: { ttl: "1 second" } }, (pool) =>
        Effect.gen(function* () {
          const [pid] = yield* pids(pool)
          const call = yield* Effect.fork(pool.execute("sleep", { ms: 2000 }))
          yield* eventually(
            "the busy worker is retiring",
            Effect.map(pool.workers(), (ws) => ws.some((w) => w.pid === pid && w.state === "stopping"))
          )
          expect(Processes.isAlive(pid!)).toBe(true)
          expect(yield* Fiber.join(call)).toEqual({ slept_ms: 2000 })
          yield* Processes.awaitGone([pid!])
          yield* eventually(
            "a new worker serves",
            Effect.map(pool.stats(), (s) => s.ready === 1)
          )
          expect(yield* ping(pool)).not.toBe(pid)
        })
      )
    )
  })

  it.live("named pools: routing, thread limits per pool, PoolNotFound", () =>
    withPool({ pools: { a: { size: 1 }, b: { size: 1, threadLimits: { openblas: 3 } } } }, (pool) =>
      Effect.gen(function* () {
        expect(pool.pools).toEqual(["a", "b"])
        const names = { names: ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"] }
        expect(yield* pool.execute("env", names, { pool: "b" })).toEqual({
          OPENBLAS_NUM_THREADS: "3",
          OMP_NUM_THREADS: "1"
        })
        expect(yield* pool.execute("env", names, { pool: "a" })).toEqual({
          OPENBLAS_NUM_THREADS: "1",
          OMP_NUM_THREADS: "1"
        })
        // The first pool is the default.
        const [aPid] = yield* pids(pool, "a")
        const [bPid] = yield* pids(pool, "b")
        expect(aPid).not.toBe(bPid)
        expect(yield* ping(pool)).toBe(aPid)
        expect(yield* ping(pool, { pool: "b" })).toBe(bPid)
        const missing = yield* Effect.flip(pool.execute("ping", {}, { pool: "zzz" }))
        expect(missing._tag).toBe("PoolNotFound")
        if (missing._tag === "PoolNotFound") expect(missing.available).toEqual(["a", "b"])
        expect((yield* Effect.flip(pool.stats("zzz")))._tag).toBe("PoolNotFound")
        expect(yield* pool.stats("a")).toMatchObject({ pool: "a", size: 1, requests: 2 })
        expect(yield* pool.stats("b")).toMatchObject({ pool: "b", size: 1, requests: 2 })
      })
    )
  )

  describe("createPool (Promise facade)", () => {
    const rejection = (promise: Promise<unknown>) =>
      Effect.promise(() =>
        promise.then(
          () => {
            throw new Error("expected a rejection")
          },
          (error: unknown) => error as { readonly _tag: string } & Record<string, unknown>
        )
      )

    it.live("default options: 2 workers, typed rejections, close stops them", () =>
      Effect.gen(function* () {
        const pool = yield* Effect.promise(() => createPool())
        const workers = yield* Effect.promise(() => pool.workers())
        expect(workers).toHaveLength(2)
        const workerPids = workers.map((w) => w.pid)
        expect(workerPids.every(Processes.isAlive)).toBe(true)
        // Without a RunId service the workers carry this process's run id.
        const ofRun = Processes.processesOfRun(RunId.forProcess()).map(([pid]) => pid)
        expect(ofRun).toEqual(expect.arrayContaining(workerPids))
        expect(yield* Effect.promise(() => pool.execute("add", { a: 2, b: 3 }))).toBe(5)
        const failure = yield* rejection(pool.execute("fail", { type: "ValueError", message: "bad" }))
        expect(failure).toBeInstanceOf(PythonError)
        expect(failure._tag).toBe("PythonError")
        expect(failure.traceback).toContain("ValueError")
        expect(yield* Effect.promise(() => pool.stats())).toMatchObject({ size: 2, requests: 2, errors: 1 })
        const report = yield* Effect.promise(() => pool.report())
        expect(report).toMatchObject({ pool: "default", min: 2, max: 2, draining: false })
        expect(report.tools.map((t) => [t.tool, t.calls, t.errors])).toEqual([
          ["add", 1, 0],
          ["fail", 1, 1]
        ])
        expect(yield* rejection(pool.resize({ min: 3, max: 1 }))).toMatchObject({ _tag: "ConfigError", key: "size" })
        yield* Effect.promise(() => pool.drain())
        expect(yield* rejection(pool.execute("add", { a: 1, b: 1 }))).toMatchObject({ _tag: "PoolDraining" })
        yield* Effect.promise(() => pool.close())
        expect(workerPids.filter(Processes.isAlive)).toEqual([])
        const closed = yield* rejection(pool.execute("add", { a: 1, b: 1 }))
        expect(closed).toBeInstanceOf(PoolClosed)
        expect(closed._tag).toBe("PoolClosed")
        yield* Effect.promise(() => pool.close()) // idempotent
      })
    )

    it.live("startup and config failures reject with the tagged error", () =>
      Effect.gen(function* () {
        const start = yield* rejection(createPool({ adapter: "failing_start", pythonPath: [fixtures] }))
        expect(start._tag).toBe("PoolStartError")
        expect(start.causes).toHaveLength(2)
        const config = yield* rejection(createPool({ size: 0 }))
        expect(config._tag).toBe("ConfigError")
        expect(config.key).toBe("size")
        expect(Processes.processesOfRun(RunId.forProcess())).toEqual([])
      })
    )
  })

  describe("createPool logging", () => {
    const quietHost = fileURLToPath(new URL("./fixtures/hosts/quiet-host.mjs", import.meta.url))
    /** Runs the quiet host to completion; its stdout and stderr. */
    const runHost = (options: object) =>
      Effect.async<{ stdout: string; stderr: string; code: number | null }>((resume) => {
        const child = spawn(process.execPath, [quietHost, JSON.stringify({ size: 1, ...options })], {
          stdio: ["ignore", "pipe", "pipe"]
        })
        let stdout = ""
        let stderr = ""
        child.stdout.on("data", (d) => {
          stdout += d
        })
        child.stderr.on("data", (d) => {
          stderr += d
        })
        child.on("close", (code) => resume(Effect.succeed({ stdout, stderr, code })))
        return Effect.sync(() => child.kill("SIGKILL"))
      }).pipe(Effect.timeoutFail({ duration: "60 seconds", onTimeout: () => new Error("the host did not finish") }))

    it.live("log lines go to stderr, never stdout; logLevel none silences them", () =>
      Effect.gen(function* () {
        const chatty = yield* runHost({})
        expect(chatty.code).toBe(0)
        expect(chatty.stdout).toBe("")
        expect(chatty.stderr).toMatch(/level=INFO .*worker default-1\.1 crashed/)
        const silent = yield* runHost({ logLevel: "none" })
        expect(silent.code).toBe(0)
        expect(silent.stdout).toBe("")
        expect(silent.stderr).toBe("")
      })
    )

    it.live("an unknown logLevel is a ConfigError, before any worker starts", () =>
      Effect.gen(function* () {
        const error = yield* Effect.promise(() =>
          createPool({ logLevel: "loud" as never }).then(
            () => undefined,
            (e: unknown) => e
          )
        )
        expect(error).toMatchObject({ _tag: "ConfigError", key: "logLevel", value: "loud" })
        expect(Processes.processesOfRun(RunId.forProcess())).toEqual([])
      })
    )
  })

  describe("configuration from the environment", () => {
    it.live("SNAKEPIT_SIZE through the ConfigProvider sizes the pool; code options win", () =>
      withRun(() =>
        Effect.gen(function* () {
          // Over the real environment, so the interpreter is still the suite's (SNAKEPIT_PYTHON).
          const withEnv = (entries: ReadonlyArray<readonly [string, string]>) =>
            ConfigProvider.fromMap(new Map(entries)).pipe(ConfigProvider.orElse(() => ConfigProvider.fromEnv()))
          const fromEnv = yield* Effect.scoped(
            Effect.flatMap(startPool({}), (pool) => pool.stats()).pipe(
              Effect.withConfigProvider(withEnv([["SNAKEPIT_SIZE", "1"]]))
            )
          )
          expect(fromEnv).toMatchObject({ size: 1, ready: 1 })
          const bad = yield* Effect.flip(
            startPool({}).pipe(Effect.withConfigProvider(withEnv([["SNAKEPIT_SIZE", "zero"]])), Effect.scoped)
          )
          expect(bad._tag).toBe("ConfigError")
          if (bad._tag === "ConfigError") expect(bad.key).toBe("SNAKEPIT_SIZE")
          // Through the layer too, with a code option over the environment.
          const context = yield* Layer.build(SnakepitPool.layer({ size: 1, env: { X: "1" } })).pipe(
            Effect.withConfigProvider(withEnv([["SNAKEPIT_SIZE", "3"]]))
          )
          expect(yield* Context.get(context, Snakepit).stats()).toMatchObject({ size: 1, ready: 1 })
        })
      )
    )
  })
})
