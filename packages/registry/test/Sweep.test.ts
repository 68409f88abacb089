import { chmodSync, existsSync } from "node:fs"
import { hostname } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import Database from "better-sqlite3"
import { Effect, Logger, LogLevel, Metric } from "effect"
import { orphansKilled, ProcessInfo } from "../src/index.js"
import {
  awaitCondition,
  awaitGone,
  awaitRunDead,
  craft,
  deadOwner,
  insertRun,
  killHost,
  newRunId,
  registryIn,
  spawnDetached,
  spawnPythonOf,
  spawnUnrelated,
  startHost,
  tempDir
} from "./helpers.js"

const killedCount = Metric.value(orphansKilled).pipe(Effect.map((state) => state.count))

describe("Registry.sweep (real processes)", () => {
  it.scopedLive(
    "sweeps the genuine orphans of a host killed with -9: workers with their groups, and their sessions",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir
        const registry = yield* registryIn(dir)
        // Two workers that stay, one that exits at once: each leaves a grandchild in its group and
        // one in a group of its own (same session). None carries the run id but the workers.
        const host = yield* startHost({ dataDir: dir, runId: newRunId(), workers: 2, exited: 1 })
        const [first, second, exited] = host.workers
        expect(host.processes.every(ProcessInfo.isAlive)).toBe(true)
        expect(ProcessInfo.isAlive(exited!.pid)).toBe(false)
        yield* killHost(host)
        yield* awaitRunDead(registry, host.runId)

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
        const { runId } = host
        expect(report.killed).toEqual(
          expect.arrayContaining([
            // live workers: with their groups (their in-group grandchildren go with them)
            { pid: first!.pid, runId, pgid: first!.pid, via: "row" },
            { pid: second!.pid, runId, pgid: second!.pid, via: "row" },
            // grandchildren that left the group, and those of the worker that is gone: by session
            { pid: first!.outOfGroup, runId, pgid: null, via: "session" },
            { pid: second!.outOfGroup, runId, pgid: null, via: "session" },
            { pid: exited!.inGroup, runId, pgid: null, via: "session" },
            { pid: exited!.outOfGroup, runId, pgid: null, via: "session" }
          ])
        )
        expect(report.killed).toHaveLength(6)
        yield* awaitGone(host.processes)
        expect(yield* registry.runs).toEqual([])
        expect(yield* registry.workers()).toEqual([])
        expect(existsSync(join(dir, "runs", `${runId}.lock`))).toBe(false)
        expect((yield* killedCount) - before).toBe(6)
        expect(lines.filter((line) => line.includes("sweep"))).toHaveLength(1)
        expect(lines.find((line) => line.includes("sweep"))).toContain("6 orphan process(es) killed")

        // a second sweep finds nothing left
        const again = yield* registry.sweep()
        expect(again).toEqual({ runsSwept: 0, endedRunsRemoved: 0, killed: [], skipped: [] })
      })
  )

  it.scopedLive("a crafted runs row naming a live host's run id with a dead owner pid kills nothing of it", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir)
      const host = yield* startHost({ dataDir: dir, runId: newRunId(), workers: 2 })
      // The run id is on every worker's command line (ps shows it); the owner pid is any dead one.
      const owner = yield* deadOwner
      yield* craft(
        registry.databasePath,
        "UPDATE runs SET owner_pid = ?, owner_start_time = ? WHERE run_id = ?",
        owner.pid,
        owner.startTime,
        host.runId
      )
      const [run] = yield* registry.runs
      expect(run).toMatchObject({ runId: host.runId, ownerPid: owner.pid })
      expect(yield* registry.liveness(run!)).toEqual({ alive: true, lock: "held", ownerAlive: false })

      const report = yield* registry.sweep()
      expect(report).toEqual({ runsSwept: 0, endedRunsRemoved: 0, killed: [], skipped: [] })
      expect(host.processes.filter((pid) => !ProcessInfo.isAlive(pid))).toEqual([])
      expect((yield* registry.workers(host.runId)).map((w) => w.pid)).toEqual(host.workers.map((w) => w.pid))
    })
  )

  it.scopedLive("a process carrying a copied --snakepit-run-id that Snakepit never started is not killed", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir)
      const host = yield* startHost({ dataDir: dir, runId: newRunId(), workers: 1 })
      // Anyone can start a process with a run id read from ps: Snakepit never started it.
      const copy = yield* spawnPythonOf(host.runId)
      yield* killHost(host)
      yield* awaitRunDead(registry, host.runId)

      const report = yield* registry.sweep()
      expect(report.runsSwept).toBe(1)
      const [worker] = host.workers
      expect(report.killed.map((k) => k.pid).sort()).toEqual([worker!.pid, worker!.outOfGroup].sort())
      expect(report.skipped).toHaveLength(1)
      expect(report.skipped[0]).toMatchObject({ pid: copy.pid, runId: host.runId })
      expect(report.skipped[0]!.reason).toContain("never killed on that alone")
      yield* awaitGone(host.processes)
      expect(ProcessInfo.isAlive(copy.pid)).toBe(true)
    })
  )

  it.scopedLive("a crafted pgid pointing at an innocent group leader is not killed", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir)
      const owner = yield* deadOwner
      const deadRun = newRunId()
      yield* insertRun(registry.databasePath, { runId: deadRun, ownerPid: owner.pid, ownerStartTime: owner.startTime })
      // An innocent group leader (its own group) with a child in its group that carries the run id.
      const leader = yield* spawnDetached("/usr/bin/python3", [
        "-c",
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '--snakepit-run-id', sys.argv[1]]); time.sleep(60)",
        deadRun,
        "innocent-leader"
      ])
      yield* awaitCondition(
        () => "the leader's child did not start",
        () => ProcessInfo.processesOfRun(deadRun).length === 1
      )
      const [member] = ProcessInfo.processesOfRun(deadRun)
      expect(ProcessInfo.processGroup(member!)).toBe(leader.pid)
      yield* registry.reserveWorker({ workerId: "w", runId: deadRun })
      // The row names the leader's group as the worker's.
      yield* registry.activateWorker({ workerId: "w", runId: deadRun, pid: member!, pgid: leader.pid })

      const report = yield* registry.sweep()
      // The member is what the row recorded (pid, start time, run id), but it does not lead its group.
      expect(report.killed).toEqual([{ pid: member!, runId: deadRun, pgid: null, via: "row" }])
      yield* awaitGone([member!])
      yield* Effect.sleep("200 millis")
      expect(ProcessInfo.isAlive(leader.pid)).toBe(true)
      expect(ProcessInfo.processGroup(leader.pid)).toBe(leader.pid)
    })
  )

  it.scopedLive("never kills a worker whose recorded start time is not its own (pid reuse), and reports it", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir)
      const owner = yield* deadOwner
      const deadRun = newRunId()
      yield* insertRun(registry.databasePath, { runId: deadRun, ownerPid: owner.pid, ownerStartTime: owner.startTime })
      const carrier = yield* spawnPythonOf(deadRun)
      yield* registry.reserveWorker({ workerId: "w", runId: deadRun })
      yield* registry.activateWorker({ workerId: "w", runId: deadRun, pid: carrier.pid, pgid: carrier.pid })
      const recorded = ProcessInfo.startTime(carrier.pid)!
      expect((yield* registry.workers(deadRun))[0]!.startTime).toBe(recorded)
      // An earlier process that had this pid: same pid and run id, another start time.
      const earlier = recorded.replace(/\d+$/, (ticks) => String(Number(ticks) - 1))
      yield* craft(registry.databasePath, "UPDATE workers SET start_time = ? WHERE run_id = ?", earlier, deadRun)

      const report = yield* registry.sweep()
      expect(report.killed).toEqual([])
      expect(report.skipped).toHaveLength(1)
      expect(report.skipped[0]).toMatchObject({ pid: carrier.pid, runId: deadRun })
      expect(report.skipped[0]!.reason).toContain(`not at the recorded ${earlier}`)
      yield* Effect.sleep("200 millis")
      expect(ProcessInfo.isAlive(carrier.pid)).toBe(true)
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

  it.scopedLive("a worker recorded before start times were (an older registry) is migrated, then only reported", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const owner = yield* deadOwner
      const deadRun = newRunId()
      const carrier = yield* spawnPythonOf(deadRun)
      // The registry as migrations 1 and 2 left it, with a dead run and its live worker.
      const db = new Database(join(dir, "registry.db"))
      db.exec(`CREATE TABLE snakepit_migrations (migration_id integer PRIMARY KEY NOT NULL,
          created_at datetime NOT NULL DEFAULT current_timestamp, name VARCHAR(255) NOT NULL);
        INSERT INTO snakepit_migrations (migration_id, name) VALUES (1, 'create_runs_and_workers'), (2, 'workers_keyed_by_run');
        CREATE TABLE runs (run_id TEXT PRIMARY KEY NOT NULL, owner_pid INTEGER NOT NULL, owner_start_time TEXT NOT NULL,
          host TEXT NOT NULL, started_at INTEGER NOT NULL, ended_at INTEGER NULL);
        CREATE TABLE workers (worker_id TEXT NOT NULL, run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
          pid INTEGER NULL, pgid INTEGER NULL, state TEXT NOT NULL CHECK (state IN ('reserved', 'active')),
          started_at INTEGER NOT NULL, PRIMARY KEY (run_id, worker_id));`)
      db.prepare("INSERT INTO runs VALUES (?, ?, ?, ?, ?, NULL)").run(
        deadRun,
        owner.pid,
        owner.startTime,
        hostname(),
        Date.now()
      )
      db.prepare("INSERT INTO workers VALUES ('w', ?, ?, ?, 'active', ?)").run(
        deadRun,
        carrier.pid,
        carrier.pid,
        Date.now()
      )
      db.close()
      chmodSync(join(dir, "registry.db"), 0o600)

      const registry = yield* registryIn(dir)
      expect(yield* registry.workers(deadRun)).toMatchObject([{ workerId: "w", pid: carrier.pid, startTime: null }])
      const report = yield* registry.sweep()
      expect(report.runsSwept).toBe(1)
      expect(report.killed).toEqual([])
      expect(report.skipped).toEqual([
        {
          pid: carrier.pid,
          runId: deadRun,
          reason: "no start time was recorded for it, so it cannot be proven ours"
        }
      ])
      yield* Effect.sleep("200 millis")
      expect(ProcessInfo.isAlive(carrier.pid)).toBe(true)
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
