import { randomBytes } from "node:crypto"
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync
} from "node:fs"
import { hostname } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import Database from "better-sqlite3"
import { ConfigProvider, Effect, Exit, Logger } from "effect"
import { ProcessInfo, Registry, RegistryUnavailable, WorkerNotFound } from "../src/index.js"
import { newRunId, registryFrom, registryIn, tempDir } from "./helpers.js"

const tables = (databasePath: string) => {
  const db = new Database(databasePath, { readonly: true })
  try {
    return (
      db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as Array<{
        name: string
      }>
    ).map((row) => row.name)
  } finally {
    db.close()
  }
}

/** Collects log messages (as text) emitted while `effect` runs. */
const withCapturedLogs = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const lines: Array<string> = []
    const logger = Logger.make(({ logLevel, message }) => {
      lines.push(`${logLevel.label} ${Array.isArray(message) ? message.join(" ") : String(message)}`)
    })
    const result = yield* effect.pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
    return [result, lines] as const
  })

describe("Registry database", () => {
  it.scopedLive("migrations create the runs and workers tables", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir)
      expect(registry.databasePath).toBe(join(dir, "registry.db"))
      expect(tables(registry.databasePath)).toEqual(expect.arrayContaining(["runs", "workers", "snakepit_migrations"]))
      // a second registry on the same directory migrates nothing and works
      const again = yield* registryIn(dir)
      expect(yield* again.runs).toEqual([])
    })
  )

  it.scopedLive("the database file has mode 0600 and is in WAL mode", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const dataDir = join(dir, "fresh", "nested")
      const registry = yield* registryIn(dataDir)
      yield* registry.startRun(newRunId()) // writes, so the -wal file exists
      expect(statSync(registry.databasePath).mode & 0o777).toBe(0o600)
      expect(statSync(dataDir).mode & 0o777).toBe(0o700)
      for (const file of readdirSync(dataDir).filter((name) => name.startsWith("registry.db"))) {
        expect(statSync(join(dataDir, file)).mode & 0o777, file).toBe(0o600)
      }
      const db = new Database(registry.databasePath, { readonly: true })
      try {
        expect(db.pragma("journal_mode", { simple: true })).toBe("wal")
      } finally {
        db.close()
      }
    })
  )

  it.scopedLive("runs and workers follow their lifecycle", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* registryIn(dir, { exitHook: false })
      const runId = newRunId()
      yield* registry.startRun(runId)
      const [run] = yield* registry.runs
      expect(run).toMatchObject({ runId, ownerPid: process.pid, host: hostname(), endedAt: null })
      expect(run!.ownerStartTime).toBe(ProcessInfo.startTime(process.pid))

      yield* registry.reserveWorker({ workerId: "w1", runId })
      expect(yield* registry.workers(runId)).toMatchObject([{ workerId: "w1", runId, pid: null, state: "reserved" }])
      expect(registry.registeredGroups()).toEqual([])

      yield* registry.attachProcess({ workerId: "w1", runId, pid: 4242, pgid: 4242 })
      expect(yield* registry.workers()).toMatchObject([{ workerId: "w1", pid: 4242, pgid: 4242, state: "reserved" }])
      expect(registry.registeredGroups()).toEqual([4242])

      yield* registry.activateWorker({ workerId: "w1", runId, pid: 4242, pgid: 4242 })
      expect(yield* registry.workers(runId)).toMatchObject([{ workerId: "w1", state: "active" }])

      const missing = yield* Effect.flip(registry.activateWorker({ workerId: "nope", runId, pid: 1, pgid: null }))
      expect(missing).toBeInstanceOf(WorkerNotFound)

      const notStarted = yield* Effect.flip(registry.reserveWorker({ workerId: "w2", runId: newRunId() }))
      expect(notStarted._tag).toBe("RegistryError")
      expect(notStarted.message).toContain("startRun")

      const duplicate = yield* Effect.flip(registry.reserveWorker({ workerId: "w1", runId }))
      expect(duplicate._tag).toBe("RegistryError")

      expect(yield* registry.removeWorker({ workerId: "w1", runId })).toBe(true)
      expect(yield* registry.removeWorker({ workerId: "w1", runId })).toBe(false)
      expect(yield* registry.workers(runId)).toEqual([])
      expect(registry.registeredGroups()).toEqual([])

      yield* registry.endRun(runId)
      const [ended] = yield* registry.runs
      expect(ended!.endedAt).toBeInstanceOf(Date)
      // restarting the same run id (a pool rebuilt in the same process) reopens the run
      yield* registry.startRun(runId)
      expect((yield* registry.runs)[0]!.endedAt).toBeNull()
    })
  )

  it.scopedLive("dataDir defaults to SNAKEPIT_DATA_DIR", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const registry = yield* Registry.layer().pipe(
        registryFrom,
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["SNAKEPIT_DATA_DIR", join(dir, "env")]])))
      )
      expect(registry.dataDir).toBe(join(dir, "env"))
      expect(statSync(join(dir, "env", "registry.db")).isFile()).toBe(true)
    })
  )

  it.scopedLive("without SNAKEPIT_DATA_DIR it uses $XDG_STATE_HOME/snakepit", () =>
    Effect.gen(function* () {
      if (process.platform !== "linux") return
      const dir = yield* tempDir
      const registry = yield* Registry.layer().pipe(
        registryFrom,
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["XDG_STATE_HOME", dir]])))
      )
      expect(registry.dataDir).toBe(join(dir, "snakepit"))
    })
  )
})

describe("Registry bad state", () => {
  it.scopedLive("a database file of random bytes is moved aside and recreated, with a warning", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const garbage = randomBytes(8192)
      writeFileSync(join(dir, "registry.db"), garbage)
      const [registry, logs] = yield* withCapturedLogs(registryIn(dir))
      const runId = newRunId()
      yield* registry.startRun(runId)
      expect((yield* registry.runs).map((run) => run.runId)).toEqual([runId])
      const aside = readdirSync(dir).filter((name) => name.startsWith("registry.db.corrupt-"))
      expect(aside).toHaveLength(1)
      expect(statSync(join(dir, aside[0]!)).size).toBe(8192)
      expect(logs.some((line) => line.startsWith("WARN") && line.includes(aside[0]!))).toBe(true)
    })
  )

  it.scopedLive("a registry.db that is a directory is moved aside and recreated", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      mkdirSync(join(dir, "registry.db"))
      const registry = yield* registryIn(dir)
      yield* registry.startRun(newRunId())
      expect(statSync(registry.databasePath).isFile()).toBe(true)
      const aside = readdirSync(dir).filter((name) => name.startsWith("registry.db.corrupt-"))
      expect(aside).toHaveLength(1)
      expect(statSync(join(dir, aside[0]!)).isDirectory()).toBe(true)
    })
  )

  it.scopedLive("a truncated database (valid header, missing pages) is moved aside", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const file = join(dir, "registry.db")
      const db = new Database(file)
      db.exec("CREATE TABLE t (x TEXT); ")
      const insert = db.prepare("INSERT INTO t VALUES (?)")
      db.transaction(() => {
        for (let i = 0; i < 2000; i++) insert.run(`row ${i} ${"x".repeat(100)}`)
      })()
      db.close()
      const bytes = Buffer.from(readFileSync(file))
      writeFileSync(file, bytes.subarray(0, 4096 * 3))
      const registry = yield* registryIn(dir)
      yield* registry.startRun(newRunId())
      expect(readdirSync(dir).filter((name) => name.startsWith("registry.db.corrupt-"))).toHaveLength(1)
    })
  )

  // Tests run as root, where chmod 0500 does not stop writes; a data dir below a regular
  // file cannot be created by anyone (ENOTDIR), which is the same failure a user sees.
  it.scopedLive("a data dir that cannot be created fails with RegistryUnavailable", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      writeFileSync(join(dir, "file"), "not a directory")
      const dataDir = join(dir, "file", "sub")
      const exit = yield* Effect.exit(registryIn(dataDir))
      expect(Exit.isFailure(exit)).toBe(true)
      const error = yield* Effect.flip(registryIn(dataDir))
      expect(error).toBeInstanceOf(RegistryUnavailable)
      expect(error.dataDir).toBe(dataDir)
      expect(error.reason).toContain("ENOTDIR")
      expect(error.message).toContain("SNAKEPIT_DATA_DIR")
      expect(error.message).toContain("permissions")
    })
  )

  // Only meaningful for a non-root user: root writes through mode 0500.
  it.scopedLive.skipIf(process.getuid?.() === 0)("a read-only data dir fails with RegistryUnavailable", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const readOnly = join(dir, "ro")
      mkdirSync(readOnly, { mode: 0o500 })
      const error = yield* Effect.flip(registryIn(readOnly))
      expect(error._tag).toBe("RegistryUnavailable")
      expect(error.reason).toContain("not a writable directory")
    })
  )

  it.scopedLive("a data dir that is a regular file fails with RegistryUnavailable", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      writeFileSync(join(dir, "file"), "not a directory")
      const error = yield* Effect.flip(registryIn(join(dir, "file")))
      expect(error._tag).toBe("RegistryUnavailable")
    })
  )
})

/** Everything that could betray a change to `path`: its bytes, mode, owner and modification time. */
const fingerprint = (path: string) => {
  const stats = lstatSync(path)
  return { bytes: readFileSync(path).toString("base64"), mode: stats.mode, uid: stats.uid, mtimeMs: stats.mtimeMs }
}

/** A SQLite file of someone else's, with one row, mode 0644. */
const foreignDatabase = (path: string) => {
  const db = new Database(path)
  db.exec("CREATE TABLE secrets (value TEXT); INSERT INTO secrets VALUES ('theirs')")
  db.close()
  chmodSync(path, 0o644)
}

describe("Registry data dir: nothing in it is trusted blindly", () => {
  for (const mode of [0o777, 0o1777, 0o770]) {
    it.scopedLive(
      `a data dir with mode ${mode.toString(8)} is refused with the fix; nothing is chmod-ed or created`,
      () =>
        Effect.gen(function* () {
          const dir = yield* tempDir
          const dataDir = join(dir, "shared")
          mkdirSync(dataDir)
          chmodSync(dataDir, mode)
          const error = yield* Effect.flip(registryIn(dataDir))
          expect(error).toBeInstanceOf(RegistryUnavailable)
          expect(error.reason).toContain(`${dataDir} is writable by`)
          expect(error.reason).toContain(`mode ${mode.toString(8).padStart(4, "0")}`)
          expect(error.fix).toContain(`chmod 700 ${dataDir}`)
          expect(error.message).toContain(`chmod 700 ${dataDir}`)
          expect(statSync(dataDir).mode & 0o7777).toBe(mode)
          expect(readdirSync(dataDir)).toEqual([])
        })
    )
  }

  it.scopedLive.skipIf(process.getuid?.() !== 0)(
    "a data dir owned by another user is refused (even for root); nothing is chmod-ed, chowned or created",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir
        const dataDir = join(dir, "theirs")
        mkdirSync(dataDir, { mode: 0o700 })
        chownSync(dataDir, 65534, 65534) // nobody
        const error = yield* Effect.flip(registryIn(dataDir))
        expect(error._tag).toBe("RegistryUnavailable")
        expect(error.reason).toContain(`${dataDir} is owned by uid 65534, not by this user (uid 0)`)
        expect(error.fix).toContain("SNAKEPIT_DATA_DIR")
        const stats = statSync(dataDir)
        expect([stats.uid, stats.mode & 0o7777]).toEqual([65534, 0o700])
        expect(readdirSync(dataDir)).toEqual([])
      })
  )

  it.scopedLive(
    "a registry.db that links to another SQLite file is refused: the target is not opened, chmod-ed or written",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir
        const dataDir = join(dir, "data")
        mkdirSync(dataDir, { mode: 0o700 })
        const target = join(dir, "other.db")
        foreignDatabase(target)
        const before = fingerprint(target)
        symlinkSync(target, join(dataDir, "registry.db"))
        const error = yield* Effect.flip(registryIn(dataDir))
        expect(error._tag).toBe("RegistryUnavailable")
        expect(error.reason).toBe(
          `${join(dataDir, "registry.db")} is a symbolic link (to ${target}): refusing to follow it`
        )
        expect(error.fix).toContain(`Remove ${join(dataDir, "registry.db")}`)
        expect(fingerprint(target)).toEqual(before)
        expect(readdirSync(dir).sort()).toEqual(["data", "other.db"]) // no other.db-wal, -shm or -journal
        expect(lstatSync(join(dataDir, "registry.db")).isSymbolicLink()).toBe(true)
        expect(readdirSync(dataDir)).toEqual(["registry.db"])
      })
  )

  it.scopedLive("a dangling registry.db link is refused, and its target is not created", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const dataDir = join(dir, "data")
      mkdirSync(dataDir, { mode: 0o700 })
      const target = join(dir, "planted.db")
      symlinkSync(target, join(dataDir, "registry.db"))
      const error = yield* Effect.flip(registryIn(dataDir))
      expect(error.reason).toContain("is a symbolic link")
      expect(existsSync(target)).toBe(false)
      expect(readdirSync(dir)).toEqual(["data"])
    })
  )

  for (const suffix of ["-wal", "-shm"]) {
    it.scopedLive(
      `a link at registry.db${suffix} is refused before the database is opened; its target is untouched`,
      () =>
        Effect.gen(function* () {
          const dir = yield* tempDir
          const dataDir = join(dir, "data")
          yield* Effect.scoped(registryIn(dataDir)) // a healthy registry, closed (its -wal and -shm removed)
          expect(existsSync(join(dataDir, `registry.db${suffix}`))).toBe(false)
          const target = join(dir, "other.db")
          foreignDatabase(target)
          const before = fingerprint(target)
          symlinkSync(target, join(dataDir, `registry.db${suffix}`))
          const error = yield* Effect.flip(registryIn(dataDir))
          expect(error.reason).toContain(`registry.db${suffix} is a symbolic link (to ${target})`)
          expect(fingerprint(target)).toEqual(before)
          expect(readdirSync(dir).sort()).toEqual(["data", "other.db"])
        })
    )
  }
})
