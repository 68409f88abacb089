/**
 * Run locks with real processes: a run is alive while its host holds the OS lock of its run,
 * whatever the rows say, and dead once the kernel has released it (ADR 0011).
 */
import { existsSync, readdirSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import Database from "better-sqlite3"
import { Effect, Exit, Scope } from "effect"
import { Registry } from "../src/index.js"
import {
  awaitRunDead,
  craft,
  deadOwner,
  killHost,
  newRunId,
  registryFrom,
  registryIn,
  startHost,
  tempDir
} from "./helpers.js"

const lockFile = (dataDir: string, runId: string) => join(dataDir, "runs", `${runId}.lock`)

/** What a plain SQLite connection of this process gets when it reads the lock file: "free" or the error code. */
const rawProbe = (file: string): string => {
  let db: Database.Database | undefined
  try {
    db = new Database(file, { readonly: true, fileMustExist: true, timeout: 0 })
    db.prepare("SELECT count(*) FROM sqlite_master").get()
    return "free"
  } catch (error) {
    return String((error as { code?: unknown }).code)
  } finally {
    db?.close()
  }
}

describe("run locks (real processes)", () => {
  it.scopedLive("the kernel holds a host's run lock while it lives and frees it when it is killed with -9", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir)
      const host = yield* startHost({ dataDir: dir, runId: newRunId(), workers: 0 })
      const file = lockFile(dir, host.runId)
      // The primitive itself, from another process: SQLITE_BUSY while the holder lives.
      expect(rawProbe(file)).toBe("SQLITE_BUSY")
      const [run] = yield* registry.runs
      expect(yield* registry.liveness(run!)).toEqual({ alive: true, lock: "held", ownerAlive: true })
      // The rows can say anything: the lock still says alive.
      const owner = yield* deadOwner
      yield* craft(
        registry.databasePath,
        "UPDATE runs SET owner_pid = ?, owner_start_time = ?",
        owner.pid,
        owner.startTime
      )
      const [crafted] = yield* registry.runs
      expect(yield* registry.liveness(crafted!)).toEqual({ alive: true, lock: "held", ownerAlive: false })

      yield* killHost(host)
      yield* awaitRunDead(registry, host.runId)
      expect(rawProbe(file)).toBe("free")
      expect(yield* registry.liveness(crafted!)).toEqual({ alive: false, lock: "free", ownerAlive: false })
    })
  )

  it.scopedLive("a second host cannot take the run of a live one", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir)
      const host = yield* startHost({ dataDir: dir, runId: newRunId(), workers: 0 })
      const error = yield* Effect.flip(registry.startRun(host.runId))
      expect(error._tag).toBe("RegistryError")
      expect(error.message).toContain(`another live process holds the lock of run ${host.runId}`)
      // Refused before writing: the row is still the host's.
      expect((yield* registry.runs).map((run) => run.ownerPid)).toEqual([host.hostPid])
    })
  )

  it.scopedLive("in one process: other connections see the lock held; it is counted per startRun; endRun ends it", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const a = yield* registryIn(dir)
      const b = yield* registryIn(dir)
      const runId = newRunId()
      const file = lockFile(dir, runId)
      yield* a.startRun(runId)
      expect(existsSync(file)).toBe(true)
      // SQLite tracks POSIX locks per inode within a process: a plain connection here gets BUSY too.
      expect(rawProbe(file)).toBe("SQLITE_BUSY")
      const [run] = yield* b.runs
      expect((yield* b.liveness(run!)).lock).toBe("held")
      expect(rawProbe(file)).toBe("SQLITE_BUSY") // probing closed its connection, and the lock held

      yield* b.startRun(runId) // the same run from a second registry of this process: counted
      yield* a.endRun(runId)
      expect((yield* a.runs)[0]!.endedAt).toBeNull() // b still runs it
      expect(rawProbe(file)).toBe("SQLITE_BUSY")
      yield* b.endRun(runId)
      expect((yield* a.runs)[0]!.endedAt).toBeInstanceOf(Date)
      expect(existsSync(file)).toBe(false)
      expect((yield* a.liveness((yield* a.runs)[0]!)).lock).toBe("free")
    })
  )

  it.scopedLive("closing a registry releases the locks it still holds", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const observer = yield* registryIn(dir)
      const runId = newRunId()
      const scope = yield* Scope.make()
      const registry = yield* registryFrom(Registry.layer({ dataDir: dir })).pipe(Scope.extend(scope))
      yield* registry.startRun(runId)
      expect(rawProbe(lockFile(dir, runId))).toBe("SQLITE_BUSY")
      yield* Scope.close(scope, Exit.void)
      expect(existsSync(lockFile(dir, runId))).toBe(false)
      const [run] = yield* observer.runs
      // Not ended (endRun was never called), and still alive while its owner, this process, is.
      expect(yield* observer.liveness(run!)).toEqual({ alive: true, lock: "free", ownerAlive: true })
    })
  )

  it.scopedLive("a sweep removes the lock files nobody holds, never a held one", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir)
      const host = yield* startHost({ dataDir: dir, runId: newRunId(), workers: 0 })
      const dead = yield* startHost({ dataDir: dir, runId: newRunId(), workers: 0 })
      yield* killHost(dead)
      yield* awaitRunDead(registry, dead.runId)
      // A lock file without a run row: a host that died between taking its lock and writing its row.
      const stray = newRunId()
      writeFileSync(lockFile(dir, stray), "")
      const report = yield* registry.sweep()
      expect(report.runsSwept).toBe(1)
      expect(readdirSync(join(dir, "runs")).sort()).toEqual([`${host.runId}.lock`])
      expect(rawProbe(lockFile(dir, host.runId))).toBe("SQLITE_BUSY")
    })
  )
})
