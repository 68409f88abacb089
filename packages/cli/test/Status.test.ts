/**
 * `snakepit status` and `snakepit sweep` against real registries and real processes: an empty
 * data dir, a live pool, and the orphans a dead host leaves. Each test leaves no process behind.
 */
import { chmodSync, existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Snakepit, SnakepitPool } from "@snakepit/core"
import { ProcessInfo, RunId } from "@snakepit/registry"
import { Processes } from "@snakepit/testkit"
import { Effect, Layer, Logger, LogLevel, Schema } from "effect"
import { Checks, checkNamed, recordDeadRun, runCli, spawnCarrying, tempDir } from "./helpers.js"

const StatusJson = Schema.parseJson(
  Schema.Struct({
    dataDir: Schema.String,
    runs: Schema.Array(
      Schema.Struct({
        runId: Schema.String,
        ownerPid: Schema.Number,
        ownerAlive: Schema.NullOr(Schema.Boolean),
        lock: Schema.NullOr(Schema.String),
        state: Schema.String,
        endedAt: Schema.NullOr(Schema.String),
        processes: Schema.Array(
          Schema.Struct({
            workerId: Schema.NullOr(Schema.String),
            pid: Schema.NullOr(Schema.Number),
            state: Schema.String,
            process: Schema.String,
            orphan: Schema.Boolean
          })
        )
      })
    ),
    orphans: Schema.Array(
      Schema.Struct({
        pid: Schema.Number,
        runId: Schema.String,
        ownerPid: Schema.Number,
        workerId: Schema.NullOr(Schema.String)
      })
    ),
    summary: Schema.Struct({
      runs: Schema.Number,
      liveRuns: Schema.Number,
      processesAlive: Schema.Number,
      orphans: Schema.Number
    }),
    fix: Schema.NullOr(Schema.String)
  })
)

const statusJson = (dir: string, code = 0) =>
  Effect.gen(function* () {
    const result = yield* runCli("status", "--data-dir", dir, "--json")
    expect(result.code).toBe(code)
    return yield* Schema.decodeUnknown(StatusJson)(result.stdout)
  })

describe("snakepit status", () => {
  it.scopedLive("says there are no runs in an empty data dir", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const text = yield* runCli("status", "--data-dir", dir)
      expect(text.code).toBe(0)
      expect(text.stdout).toContain(`registry: ${join(dir, "registry.db")} (data dir from --data-dir)`)
      expect(text.stdout).toContain("no runs recorded")
      expect(text.stdout).toContain("0 runs, 0 live; 0 worker processes alive; 0 orphans")
      const json = yield* statusJson(dir)
      expect(json.runs).toEqual([])
      expect(json.summary).toEqual({ runs: 0, liveRuns: 0, processesAlive: 0, orphans: 0 })
      expect(json.fix).toBeNull()
    })
  )

  it.scopedLive("says a data dir that does not exist does not exist, exits 1, and creates nothing", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const missing = join(dir, "typo", "data")
      const text = yield* runCli("status", "--data-dir", missing)
      expect(text.code).toBe(1)
      expect(text.stderr).toMatch(
        new RegExp(`^FAIL +the data directory ${missing} does not exist \\(data dir from --data-dir\\)`, "m")
      )
      expect(text.stderr).toContain("fix: check the path: pass --data-dir the directory your pools use")
      expect(text.stdout).toBe("")
      const json = yield* runCli("status", "--data-dir", missing, "--json")
      expect(json.code).toBe(1)
      expect(JSON.parse(json.stdout)).toMatchObject({ error: { check: "data-dir", status: "fail" } })
      expect(JSON.parse(json.stdout).error.detail).toContain(`${missing} does not exist`)
      const sweep = yield* runCli("sweep", "--data-dir", missing)
      expect(sweep.code).toBe(1)
      expect(sweep.stderr).toContain(`the data directory ${missing} does not exist`)
      // Looking created nothing: not the directory, not its parent.
      expect(existsSync(join(dir, "typo"))).toBe(false)
    })
  )

  it.scopedLive("FAILs clearly, with the fix, when the data dir is a file path (ENOTDIR)", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const file = join(dir, "plain-file")
      writeFileSync(file, "")
      const text = yield* runCli("status", "--data-dir", join(file, "data"))
      expect(text.code).toBe(1)
      expect(text.stderr).toMatch(/^FAIL +cannot open the registry in .*: .*ENOTDIR/m)
      expect(text.stderr).toContain(`fix: ${file} is a file`)
      const json = yield* runCli("status", "--data-dir", join(file, "data"), "--json")
      expect(json.code).toBe(1)
      expect(JSON.parse(json.stdout)).toMatchObject({ error: { check: "data-dir", status: "fail" } })
      const sweep = yield* runCli("sweep", "--data-dir", join(file, "data"))
      expect(sweep.code).toBe(1)
      expect(sweep.stderr).toContain(`fix: ${file} is a file`)
    })
  )

  it.scopedLive("FAILs on a world-writable data dir with the registry's own fix, and changes nothing", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const shared = join(dir, "shared")
      mkdirSync(shared)
      chmodSync(shared, 0o777)
      const text = yield* runCli("status", "--data-dir", shared)
      expect(text.code).toBe(1)
      expect(text.stderr).toMatch(
        /^FAIL +cannot open the registry in .*: .* is writable by its group and others \(mode 0777\)/m
      )
      expect(text.stderr).toContain(`fix: Check that nothing in ${shared} was planted`)
      expect(text.stderr).toContain(`chmod 700 ${shared}`)
      expect(statSync(shared).mode & 0o777).toBe(0o777)
      expect(readdirSync(shared)).toEqual([])
    })
  )

  it.scopedLive("shows a live pool's run and worker as alive, not orphans; sweep leaves them alone", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const runId = RunId.generate()
      yield* Effect.scoped(
        Effect.gen(function* () {
          const pool = yield* Snakepit
          const [worker] = yield* pool.workers()
          const json = yield* statusJson(dir)
          expect(json.summary).toEqual({ runs: 1, liveRuns: 1, processesAlive: 1, orphans: 0 })
          expect(json.runs[0]).toMatchObject({
            runId,
            ownerPid: process.pid,
            ownerAlive: true,
            lock: "held",
            state: "live"
          })
          expect(json.runs[0]?.processes).toEqual([
            { workerId: worker!.id, pid: worker!.pid, state: "active", process: "alive", orphan: false }
          ])
          const text = yield* runCli("status", "--data-dir", dir)
          expect(text.stdout).toContain("1 run, 1 live; 1 worker process alive; 0 orphans")
          expect(text.stdout).not.toContain("ORPHAN")

          const sweep = yield* runCli("sweep", "--data-dir", dir)
          expect(sweep.code).toBe(0)
          expect(sweep.stdout).toContain("nothing to sweep")
          expect(yield* pool.execute("add", { a: 1, b: 2 })).toBe(3)
          expect(ProcessInfo.isAlive(worker!.pid)).toBe(true)
        }).pipe(Effect.provide(Layer.provide(SnakepitPool.layer({ size: 1, dataDir: dir }), RunId.RunId.fixed(runId))))
      ).pipe(Logger.withMinimumLogLevel(LogLevel.Warning)) // the pool's own startup sweep logs at Info
      yield* Processes.awaitRunGone(runId)
      // Closed: the run is ended (its owner, this process, still alive) and has no worker left.
      const after = yield* statusJson(dir)
      expect(after.runs).toMatchObject([{ runId, state: "ended", ownerAlive: true, processes: [] }])
      expect(after.summary.orphans).toBe(0)
    })
  )

  it.scopedLive("flags an orphan of a dead host; doctor FAILs with `snakepit sweep`; sweep kills it; then clean", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const runId = RunId.generate()
      const orphan = yield* spawnCarrying(runId)
      const ownerPid = yield* recordDeadRun(dir, runId, orphan)

      const json = yield* statusJson(dir, 1) // exit code 1: orphans
      expect(json.summary).toEqual({ runs: 1, liveRuns: 0, processesAlive: 1, orphans: 1 })
      expect(json.runs[0]).toMatchObject({ runId, ownerPid, ownerAlive: false, lock: "free", state: "dead" })
      expect(json.orphans).toEqual([{ pid: orphan, runId, ownerPid, workerId: "default-1.1" }])
      expect(json.fix).toContain(`snakepit sweep --data-dir ${dir}`)
      const text = yield* runCli("status", "--data-dir", dir)
      expect(text.code).toBe(1)
      expect(text.stdout).toMatch(new RegExp(`default-1\\.1 +${orphan} +${orphan} +active +alive +ORPHAN`))
      expect(text.stdout).toContain("1 run, 0 live; 1 worker process alive; 1 orphan")
      expect(text.stdout).toMatch(/^FAIL +1 orphaned process of dead runs: pid \d+/m)
      expect(text.stdout).toContain("fix: run `snakepit sweep --data-dir")

      const doctor = yield* runCli("doctor", "--data-dir", dir, "--json")
      expect(doctor.code).toBe(1)
      const checks = yield* Schema.decodeUnknown(Checks)(doctor.stdout)
      const leftovers = checkNamed(checks, "leftovers")
      expect(leftovers.status).toBe("fail")
      expect(leftovers.detail).toContain(`pid ${orphan}`)
      expect(leftovers.fix).toContain("snakepit sweep")
      expect(checks.filter((c) => c.status === "fail").map((c) => c.check)).toEqual(["leftovers"])
      // The doctor looks; it never kills.
      expect(ProcessInfo.isAlive(orphan)).toBe(true)

      const sweep = yield* runCli("sweep", "--data-dir", dir)
      expect(sweep.code).toBe(0)
      expect(sweep.stdout).toContain("swept 1 dead run; killed 1 orphaned process:")
      expect(sweep.stdout).toContain(`killed pid ${orphan} (registered worker of run ${runId}`)
      yield* Processes.awaitGone([orphan])
      expect(Processes.processesOfRun(runId)).toEqual([])

      const after = yield* statusJson(dir)
      expect(after.runs).toEqual([])
      expect(after.summary).toEqual({ runs: 0, liveRuns: 0, processesAlive: 0, orphans: 0 })
      const again = yield* runCli("sweep", "--data-dir", dir)
      expect(again.stdout).toContain("nothing to sweep")
    })
  )

  it.scopedLive("a process carrying a copied run id is suspicious, not an orphan: sweep kills the worker, not it", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const runId = RunId.generate()
      const worker = yield* spawnCarrying(runId)
      const copy = yield* spawnCarrying(runId) // never recorded: anyone could have started it
      yield* recordDeadRun(dir, runId, worker)

      const json = yield* statusJson(dir, 1)
      expect(json.orphans.map((o) => o.pid)).toEqual([worker])
      expect(json.runs[0]?.processes).toEqual(
        expect.arrayContaining([
          { workerId: "default-1.1", pid: worker, state: "active", process: "alive", orphan: true },
          { workerId: null, pid: copy, state: "unregistered", process: "suspicious", orphan: false }
        ])
      )
      const text = yield* runCli("status", "--data-dir", dir)
      expect(text.stdout).toMatch(new RegExp(`- +${copy} +${copy} +unregistered +suspicious`))

      const sweep = yield* runCli("sweep", "--data-dir", dir)
      expect(sweep.stdout).toContain(`killed pid ${worker} (registered worker of run ${runId}`)
      expect(sweep.stdout).toMatch(new RegExp(`left pid ${copy} alone .*never killed on that alone`))
      yield* Processes.awaitGone([worker])
      yield* Effect.sleep("200 millis")
      expect(ProcessInfo.isAlive(copy)).toBe(true)
    })
  )
})
