import { existsSync, mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { RunId } from "@snakepit/registry"
import { Processes, Venv } from "@snakepit/testkit"
import { Duration, Effect, Exit, Fiber, Schedule, Scope } from "effect"
import { Worker } from "../src/index.js"

const fixtures = fileURLToPath(new URL("./fixtures/python", import.meta.url))

/** Runs `body` with a fresh run id, then proves no process of that run is alive. */
const withRun = <A, E>(body: (runId: string) => Effect.Effect<A, E, Scope.Scope | NodeContext.NodeContext>) =>
  Effect.gen(function* () {
    const runId = RunId.generate()
    const exit = yield* body(runId).pipe(Effect.scoped, Effect.exit)
    yield* Processes.awaitRunGone(runId)
    return yield* exit
  }).pipe(Effect.provide(NodeContext.layer))

const startError = (options: Worker.WorkerOptions) =>
  Worker.make(options).pipe(
    Effect.flip,
    Effect.map((e) => {
      if (e._tag !== "WorkerStartError") throw new Error(`expected WorkerStartError, got ${e._tag}`)
      return e
    })
  )

/** Polls the worker until a call is in flight. */
const awaitActiveCall = (worker: Worker.Worker) =>
  worker.health().pipe(
    Effect.filterOrFail(
      (h) => h.activeCalls > 0,
      () => new Error("no active call yet")
    ),
    Effect.retry(Schedule.spaced(Duration.millis(20)).pipe(Schedule.upTo(Duration.seconds(10))))
  )

describe("Worker", () => {
  it.live("starts, answers ping/echo/add, and leaves nothing behind", () =>
    withRun((runId) =>
      Effect.gen(function* () {
        const worker = yield* Worker.make({ runId })
        expect(Processes.processesOfRun(runId).map(([pid]) => pid)).toContain(worker.pid)
        const pong = (yield* worker.execute("ping")) as { message: string; pid: number }
        expect(pong).toEqual({ message: "pong", pid: worker.pid })
        expect(yield* worker.execute("echo", { value: { nested: [1, "two", null] } })).toEqual({
          nested: [1, "two", null]
        })
        expect(yield* worker.execute("add", { a: 2, b: 40 })).toBe(42)
      })
    )
  )

  it.live("stops the process and its grandchildren when the scope closes", () =>
    withRun((runId) =>
      Effect.gen(function* () {
        const scope = yield* Scope.make()
        const worker = yield* Worker.make({ runId }).pipe(Scope.extend(scope))
        const { pid: child } = (yield* worker.execute("spawn_child", { seconds: 600 })) as { pid: number }
        expect(Processes.isAlive(child)).toBe(true)
        yield* Scope.close(scope, Exit.void)
        expect(Processes.isAlive(worker.pid)).toBe(false)
        yield* Processes.awaitGone([child])
        expect(yield* worker.exited).toEqual({ code: 0, signal: null })
      })
    )
  )

  describe("bad input gets a typed error", () => {
    it.live("no usable Python names every interpreter tried", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const missing = yield* startError({ runId, python: "/nonexistent/python3" })
          expect(missing.reason).toBe("python_not_found")
          expect(missing.tried).toEqual(["/nonexistent/python3"])
          expect(missing.detail).toContain("/nonexistent/python3 (not found)")
          // A program that exists but is no Python (node stands in for it).
          const notPython = yield* startError({ runId, python: process.execPath })
          expect(notPython.reason).toBe("python_not_found")
          // A bare venv runs the local transport, but not gRPC: that one needs grpcio, and says so.
          const bare = yield* Venv.make()
          const noGrpc = yield* startError({ runId, python: bare.python, transport: "grpc" })
          expect(noGrpc.reason).toBe("python_not_found")
          expect(noGrpc.detail).toContain("cannot import grpc")
        })
      )
    )

    it.live("an adapter module that does not import carries the Python traceback", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const error = yield* startError({ runId, adapter: "broken_import", pythonPath: [fixtures] })
          expect(error.reason).toBe("adapter_import_failed")
          expect(error.traceback).toContain("Traceback (most recent call last):")
          expect(error.traceback).toContain("ModuleNotFoundError")
          expect(error.traceback).toContain("snakepit_missing_dependency_xyz")
          const unknown = yield* startError({ runId, adapter: "no_such_adapter_module" })
          expect(unknown.reason).toBe("adapter_import_failed")
          expect(unknown.stderrTail).toContain("no_such_adapter_module")
        })
      )
    )

    it.live("an adapter that raises at startup", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const error = yield* startError({ runId, adapter: "failing_start", pythonPath: [fixtures] })
          expect(error.reason).toBe("adapter_start_failed")
          expect(error.traceback).toContain("RuntimeError: model weights not found")
        })
      )
    )

    it.live("a worker that exits before its readiness line", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const error = yield* startError({ runId, adapter: "early_exit", pythonPath: [fixtures] })
          expect(error.reason).toBe("exited_before_ready")
          expect(error.exitCode).toBe(7)
          expect(error.stderrTail).toContain("early_exit: giving up before readiness")
        })
      )
    )

    it.live("a readiness timeout stops the process and its grandchild", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const error = yield* startError({
            runId,
            adapter: "slow_start",
            pythonPath: [fixtures],
            startupTimeout: Duration.seconds(2)
          })
          expect(error.reason).toBe("startup_timeout")
        })
      )
    )

    it.live("an unknown tool lists the tools there are", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const worker = yield* Worker.make({ runId })
          const error = yield* Effect.flip(worker.execute("no_such_tool"))
          expect(error._tag).toBe("ToolNotFound")
          if (error._tag !== "ToolNotFound") return
          expect(error.available).toEqual(expect.arrayContaining(["ping", "echo", "add", "flood", "call_host"]))
          expect(yield* worker.execute("add", { a: 1, b: 1 })).toBe(2)
        })
      )
    )

    it.live("arguments that are not JSON fail before anything is sent", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const worker = yield* Worker.make({ runId })
          // Kill the worker first: a typed InvalidArguments (not WorkerCrashed) proves nothing was sent.
          process.kill(worker.pid, "SIGKILL")
          yield* worker.exited
          const circular: Record<string, unknown> = {}
          circular.self = circular
          const cases: Array<[unknown, string]> = [
            [{ value: 10n }, "args.value"],
            [{ value: () => 1 }, "args.value"],
            [{ value: Symbol("s") }, "args.value"],
            [{ value: Number.NaN }, "args.value"],
            [{ value: [1, undefined] }, "args.value[1]"],
            [{ value: new Map([["a", 1]]) }, "args.value"],
            [circular, "args.self"],
            [[1, 2], "args"],
            ["text", "args"]
          ]
          for (const [args, path] of cases) {
            const error = yield* Effect.flip(worker.execute("echo", args))
            expect(error._tag).toBe("InvalidArguments")
            if (error._tag === "InvalidArguments") expect(error.path).toBe(path)
          }
        })
      )
    )

    it.live("arguments that do not fit the signature are InvalidArguments from Python", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const worker = yield* Worker.make({ runId })
          const missing = yield* Effect.flip(worker.execute("add", { a: 1 }))
          expect(missing._tag).toBe("InvalidArguments")
          expect(missing.message).toContain("b")
          const extra = yield* Effect.flip(worker.execute("ping", { nope: 1 }))
          expect(extra._tag).toBe("InvalidArguments")
          expect(yield* worker.execute("add", { a: 1, b: 2 })).toBe(3)
        })
      )
    )

    it.live("a Python exception is a PythonError with type, message and traceback", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const worker = yield* Worker.make({ runId })
          const error = yield* Effect.flip(worker.execute("fail", { type: "KeyError", message: "no such user" }))
          expect(error._tag).toBe("PythonError")
          if (error._tag !== "PythonError") return
          expect(error.type).toBe("KeyError")
          expect(error.message).toContain("no such user")
          expect(error.traceback).toContain("Traceback (most recent call last):")
          expect(error.traceback).toContain("KeyError")
          expect(error.workerId).toBe(worker.id)
          expect(yield* worker.execute("echo", { value: "still serving" })).toBe("still serving")
        })
      )
    )

    it.live("a worker killed mid-call gives WorkerCrashed with the signal", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const worker = yield* Worker.make({ runId })
          const call = yield* Effect.fork(worker.execute("sleep", { ms: 30_000 }))
          yield* awaitActiveCall(worker)
          process.kill(worker.pid, "SIGKILL")
          const error = yield* Effect.flip(Fiber.join(call))
          expect(error._tag).toBe("WorkerCrashed")
          if (error._tag !== "WorkerCrashed") return
          expect(error.signal).toBe("SIGKILL")
          expect(error.pid).toBe(worker.pid)
          expect(error.tool).toBe("sleep")
        })
      )
    )

    it.live("a worker that exits mid-call gives WorkerCrashed with the exit code and stderr tail", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const worker = yield* Worker.make({ runId })
          const error = yield* Effect.flip(worker.execute("crash", { code: 9 }))
          expect(error._tag).toBe("WorkerCrashed")
          if (error._tag !== "WorkerCrashed") return
          expect(error.exitCode).toBe(9)
          expect(error.signal).toBeNull()
          expect(error.stderrTail.length).toBeGreaterThan(0)
        })
      )
    )

    it.live("a call timeout cancels the call and the worker keeps serving", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const worker = yield* Worker.make({ runId })
          const error = yield* Effect.flip(worker.execute("sleep", { ms: 20_000 }, { timeout: Duration.millis(300) }))
          expect(error._tag).toBe("CallTimeout")
          expect(yield* worker.execute("add", { a: 20, b: 22 })).toBe(42)
        })
      )
    )
  })

  describe("interrupting acquisition leaves no process alive", () => {
    it.live("before and around spawn", () =>
      Effect.forEach([0, 5, 25, 75, 150], (delayMs) =>
        withRun((runId) =>
          Effect.gen(function* () {
            const fiber = yield* Effect.fork(Effect.scoped(Worker.make({ runId })))
            yield* Effect.sleep(Duration.millis(delayMs))
            yield* Fiber.interrupt(fiber)
          })
        )
      )
    )

    it.live("while waiting for readiness, grandchild included", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const fiber = yield* Effect.fork(
            Effect.scoped(Worker.make({ runId, adapter: "slow_start", pythonPath: [fixtures] }))
          )
          // The worker and its grandchild both carry the run id.
          yield* Processes.awaitCondition(
            "worker and grandchild started",
            () => Processes.processesOfRun(runId).length >= 2
          )
          const pids = Processes.processesOfRun(runId).map(([pid]) => pid)
          yield* Fiber.interrupt(fiber)
          expect(pids.filter(Processes.isAlive)).toEqual([])
        })
      )
    )

    it.live("while connecting", () =>
      withRun((runId) =>
        Effect.gen(function* () {
          const marker = join(mkdtempSync(join(tmpdir(), "snakepit-test-")), "announced")
          const fiber = yield* Effect.fork(
            Effect.scoped(
              Worker.make({
                runId,
                adapter: "fake_ready",
                pythonPath: [fixtures],
                env: { SNAKEPIT_TEST_MARKER: marker }
              })
            )
          )
          yield* Processes.awaitCondition("fake readiness announced", () => existsSync(marker))
          const pids = Processes.processesOfRun(runId).map(([pid]) => pid)
          expect(pids.length).toBeGreaterThan(0)
          expect(fiber.unsafePoll()).toBeNull()
          yield* Fiber.interrupt(fiber)
          expect(pids.filter(Processes.isAlive)).toEqual([])
        })
      )
    )
  })

  it.live("thread limits: one override merges with the defaults", () =>
    withRun((runId) =>
      Effect.gen(function* () {
        const worker = yield* Worker.make({ runId, threadLimits: { openblas: 4 } })
        const env = yield* worker.execute("env", {
          names: [
            "OMP_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "MKL_NUM_THREADS",
            "NUMEXPR_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS"
          ]
        })
        expect(env).toEqual({
          OMP_NUM_THREADS: "1",
          OPENBLAS_NUM_THREADS: "4",
          MKL_NUM_THREADS: "1",
          NUMEXPR_NUM_THREADS: "1",
          VECLIB_MAXIMUM_THREADS: "1"
        })
      })
    )
  )

  it.live("a bad thread limit is a ConfigError naming the key", () =>
    withRun((runId) =>
      Effect.gen(function* () {
        const error = yield* Effect.flip(Worker.make({ runId, threadLimits: { mkl: 0 } }))
        expect(error._tag).toBe("ConfigError")
        if (error._tag === "ConfigError") expect(error.key).toBe("threadLimits.mkl")
      })
    )
  )
})
