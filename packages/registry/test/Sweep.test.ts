import { describe, expect, it } from "@effect/vitest"
import { Effect, Logger, LogLevel, Metric } from "effect"
import { orphansKilled, ProcessInfo } from "../src/index.js"
import {
  awaitGone,
  deadOwner,
  insertRun,
  newRunId,
  registryIn,
  spawnPythonOf,
  spawnUnrelated,
  tempDir
} from "./helpers.js"

const killedCount = Metric.value(orphansKilled).pipe(Effect.map((state) => state.count))

describe("Registry.sweep (real processes)", () => {
  it.scopedLive("kills the workers and unregistered processes of a dead owner's run, then deletes its rows", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir)
      const owner = yield* deadOwner
      const deadRun = newRunId()
      yield* insertRun(registry.databasePath, { runId: deadRun, ownerPid: owner.pid, ownerStartTime: owner.startTime })

      const worker = yield* spawnPythonOf(deadRun)
      const grandchild = yield* spawnPythonOf(deadRun) // carries the id, never registered
      const reservedOnly = yield* spawnPythonOf(deadRun) // its row was reserved, never activated
      yield* registry.reserveWorker({ workerId: "w-active", runId: deadRun })
      yield* registry.activateWorker({ workerId: "w-active", runId: deadRun, pid: worker.pid, pgid: worker.pid })
      yield* registry.reserveWorker({ workerId: "w-reserved", runId: deadRun })

      const before = yield* killedCount
      const lines: Array<string> = []
      const report = yield* registry.sweep().pipe(
        Effect.provide(
          Logger.replace(
            Logger.defaultLogger,
            Logger.make(({ message }) => lines.push(String(message)))
          )
        )
      )

      expect(report.runsSwept).toBe(1)
      expect(report.skipped).toEqual([])
      expect(report.killed).toEqual(
        expect.arrayContaining([
          { pid: worker.pid, runId: deadRun, pgid: worker.pid, via: "row" },
          { pid: grandchild.pid, runId: deadRun, pgid: grandchild.pid, via: "scan" },
          { pid: reservedOnly.pid, runId: deadRun, pgid: reservedOnly.pid, via: "scan" }
        ])
      )
      expect(report.killed).toHaveLength(3)
      yield* awaitGone([worker.pid, grandchild.pid, reservedOnly.pid])
      expect(yield* registry.runs).toEqual([])
      expect(yield* registry.workers()).toEqual([])
      expect((yield* killedCount) - before).toBe(3)
      expect(lines.filter((line) => line.includes("sweep"))).toHaveLength(1)
      expect(lines.find((line) => line.includes("sweep"))).toContain("3 orphan process(es) killed")

      // a second sweep finds nothing left
      const again = yield* registry.sweep()
      expect(again).toEqual({ runsSwept: 0, endedRunsRemoved: 0, killed: [], skipped: [] })
    })
  )

  it.scopedLive("a run that ended cleanly before its owner exited is removed, not reported as a dead run", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir)
      const owner = yield* deadOwner
      const endedRun = newRunId()
      yield* insertRun(registry.databasePath, {
        runId: endedRun,
        ownerPid: owner.pid,
        ownerStartTime: owner.startTime,
        endedAt: Date.now()
      })
      const logs: Array<{ level: string; message: string }> = []
      const report = yield* registry.sweep().pipe(
        Effect.provide(
          Logger.replace(
            Logger.defaultLogger,
            Logger.make(({ logLevel, message }) => logs.push({ level: logLevel.label, message: String(message) }))
          )
        ),
        Logger.withMinimumLogLevel(LogLevel.All)
      )
      expect(report).toEqual({ runsSwept: 0, endedRunsRemoved: 1, killed: [], skipped: [] })
      expect(yield* registry.runs).toEqual([])
      // Said at Debug only, and as what it is: nothing at Info, no "dead run" swept.
      expect(logs.filter((l) => l.level !== "DEBUG")).toEqual([])
      expect(logs.map((l) => l.message)).toEqual([
        "snakepit registry sweep: 0 dead run(s) swept, 0 orphan process(es) killed, 0 skipped; 1 cleanly ended run(s) cleaned up"
      ])
    })
  )

  it.scopedLive("treats an owner pid that is alive with another start time as dead (pid reuse of the host)", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir)
      const deadRun = newRunId()
      // this test process's pid, but not its start time: an earlier host that had our pid
      yield* insertRun(registry.databasePath, {
        runId: deadRun,
        ownerPid: process.pid,
        ownerStartTime: `${ProcessInfo.startTime(process.pid)}0`
      })
      const worker = yield* spawnPythonOf(deadRun)
      yield* registry.reserveWorker({ workerId: "w", runId: deadRun })
      yield* registry.activateWorker({ workerId: "w", runId: deadRun, pid: worker.pid, pgid: worker.pid })
      const report = yield* registry.sweep()
      expect(report.runsSwept).toBe(1)
      expect(report.killed.map((k) => k.pid)).toEqual([worker.pid])
      yield* awaitGone([worker.pid])
    })
  )

  it.scopedLive("never kills a registered pid whose command line lacks the run id (PID reuse), and reports it", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir)
      const owner = yield* deadOwner
      const deadRun = newRunId()
      yield* insertRun(registry.databasePath, { runId: deadRun, ownerPid: owner.pid, ownerStartTime: owner.startTime })
      const unrelated = yield* spawnUnrelated()
      yield* registry.reserveWorker({ workerId: "w", runId: deadRun })
      yield* registry.activateWorker({ workerId: "w", runId: deadRun, pid: unrelated.pid, pgid: unrelated.pid })

      const report = yield* registry.sweep()
      expect(report.killed).toEqual([])
      expect(report.skipped).toHaveLength(1)
      expect(report.skipped[0]).toMatchObject({ pid: unrelated.pid, runId: deadRun })
      expect(report.skipped[0]!.reason).toContain("does not carry --snakepit-run-id")
      yield* Effect.sleep("200 millis")
      expect(ProcessInfo.isAlive(unrelated.pid)).toBe(true)
      // the stale rows are gone all the same
      expect(yield* registry.workers()).toEqual([])
    })
  )

  it.scopedLive("leaves a run whose owner is alive untouched", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const host = yield* registryIn(dir)
      const liveRun = newRunId()
      yield* host.startRun(liveRun) // owner: this test process, alive
      const worker = yield* spawnPythonOf(liveRun)
      yield* host.reserveWorker({ workerId: "w", runId: liveRun })
      yield* host.activateWorker({ workerId: "w", runId: liveRun, pid: worker.pid, pgid: worker.pid })

      const other = yield* registryIn(dir) // another instance, as a second host would be
      const report = yield* other.sweep()
      expect(report).toEqual({ runsSwept: 0, endedRunsRemoved: 0, killed: [], skipped: [] })
      // the owner's own sweep never touches its own run either
      expect(yield* host.sweep()).toEqual({ runsSwept: 0, endedRunsRemoved: 0, killed: [], skipped: [] })
      yield* Effect.sleep("200 millis")
      expect(ProcessInfo.isAlive(worker.pid)).toBe(true)
      expect((yield* host.workers(liveRun)).map((w) => w.workerId)).toEqual(["w"])
    })
  )

  it.scopedLive("two registries on one data dir never touch each other's live workers", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const a = yield* registryIn(dir)
      const b = yield* registryIn(dir)
      const runA = newRunId()
      const runB = newRunId()
      yield* a.startRun(runA)
      yield* b.startRun(runB)
      const workerA = yield* spawnPythonOf(runA)
      const workerB = yield* spawnPythonOf(runB)
      yield* a.reserveWorker({ workerId: "a1", runId: runA })
      yield* a.activateWorker({ workerId: "a1", runId: runA, pid: workerA.pid, pgid: workerA.pid })
      yield* b.reserveWorker({ workerId: "b1", runId: runB })
      yield* b.activateWorker({ workerId: "b1", runId: runB, pid: workerB.pid, pgid: workerB.pid })

      expect((yield* a.sweep()).killed).toEqual([])
      expect((yield* b.sweep()).killed).toEqual([])
      // A stops: its worker goes (as core's finalizer would), its run ends; B's worker keeps serving
      process.kill(-workerA.pid, "SIGKILL")
      yield* awaitGone([workerA.pid])
      yield* a.removeWorker({ workerId: "a1", runId: runA })
      yield* a.endRun(runA)
      expect((yield* b.sweep()).killed).toEqual([])
      yield* Effect.sleep("200 millis")
      expect(ProcessInfo.isAlive(workerB.pid)).toBe(true)
      expect((yield* b.workers(runB)).map((w) => w.workerId)).toEqual(["b1"])
      expect(a.registeredGroups()).toEqual([])
      expect(b.registeredGroups()).toEqual([workerB.pid])
    })
  )

  it.scopedLive("ignores runs recorded by another host", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir)
      const foreignRun = newRunId()
      yield* insertRun(registry.databasePath, {
        runId: foreignRun,
        ownerPid: 999_999,
        ownerStartTime: "linux:elsewhere:1",
        host: "some-other-host.invalid"
      })
      const lookalike = yield* spawnPythonOf(foreignRun)
      const report = yield* registry.sweep()
      expect(report.runsSwept).toBe(0)
      expect(ProcessInfo.isAlive(lookalike.pid)).toBe(true)
      expect((yield* registry.runs).map((run) => run.runId)).toEqual([foreignRun])
    })
  )
})
