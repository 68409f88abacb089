/**
 * The pool and its process registry: rows follow the workers, bad registry state is handled.
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { Registry, RunId } from "@snakepit/registry"
import { Disks, Processes } from "@snakepit/testkit"
import { Context, Effect, Layer, Logger, LogLevel, Schema } from "effect"
import { createPool, Snakepit, SnakepitPool } from "../src/index.js"

const freshDir = () => mkdtempSync(join(tmpdir(), "snakepit-data-"))
const cleanHost = fileURLToPath(new URL("./fixtures/hosts/clean-host.mjs", import.meta.url))

describe("pool ↔ registry", () => {
  it.scopedLive("worker rows are active while the pool runs and gone once it is closed", () =>
    Effect.gen(function* () {
      const dataDir = freshDir()
      const runId = RunId.generate()
      const registry = Context.get(yield* Layer.build(Registry.layer({ dataDir, exitHook: false })), Registry)
      const pids = yield* Effect.scoped(
        Effect.gen(function* () {
          const pool = yield* Snakepit
          // Numeric order on both sides: pids wrap around (32767 then 302), and sort() alone is lexical.
          const pids = (yield* pool.workers()).map((w) => w.pid).sort((a, b) => a - b)
          const rows = [...(yield* registry.workers(runId))].sort((a, b) => (a.pid ?? 0) - (b.pid ?? 0))
          expect(rows.map((r) => [r.pid, r.state])).toEqual(pids.map((pid) => [pid, "active"]))
          return pids
        }).pipe(Effect.provide(Layer.provide(SnakepitPool.layer({ size: 2, dataDir }), RunId.RunId.fixed(runId))))
      )
      expect(pids).toHaveLength(2)
      expect(yield* registry.workers(runId)).toEqual([])
    })
  )

  it.scopedLive("after a clean shutdown, the next start reports no dead run", () =>
    Effect.gen(function* () {
      const dataDir = freshDir()
      // Another host process runs a pool, closes it cleanly, and exits.
      const host = yield* Processes.runToCompletion(process.execPath, [cleanHost, dataDir])
      const { runId } = yield* Schema.decodeUnknown(Schema.parseJson(Schema.Struct({ runId: Schema.String })))(
        host.stdout.trim()
      )
      yield* Processes.awaitGone([host.pid])
      yield* Processes.awaitRunGone(runId)

      const logs: Array<string> = []
      const answer = yield* Effect.scoped(
        Effect.flatMap(Snakepit, (pool) => pool.execute("add", { a: 2, b: 3 })).pipe(
          Effect.provide(SnakepitPool.layer({ size: 1, dataDir }))
        )
      ).pipe(
        Effect.provide(
          Logger.replace(
            Logger.defaultLogger,
            Logger.make(({ logLevel, message }) => logs.push(`${logLevel.label} ${String(message)}`))
          )
        ),
        Logger.withMinimumLogLevel(LogLevel.Info)
      )
      expect(answer).toBe(5)
      // The ended run was tidied away without a word at Info: it was not dead, nothing was swept.
      expect(logs.filter((line) => /dead run|swept|orphan/.test(line))).toEqual([])
      const registry = Context.get(yield* Layer.build(Registry.layer({ dataDir, exitHook: false })), Registry)
      expect((yield* registry.runs).map((run) => run.runId)).not.toContain(runId)
    })
  )

  it.live("two live pools of the same name in one process get distinct worker ids", () =>
    Effect.promise(async () => {
      const dataDir = freshDir()
      const first = await createPool({ size: 1, dataDir })
      const second = await createPool({ size: 1, dataDir })
      try {
        const [a] = await first.workers()
        const [b] = await second.workers()
        expect(a?.id).toBe("default-1.1")
        expect(b?.id).toBe("default#2-1.1")
        expect(await first.execute("add", { a: 1, b: 1 })).toBe(2)
        expect(await second.execute("add", { a: 2, b: 2 })).toBe(4)
        // The second pool's ids do not reach the first pool.
        await expect(first.stopWorker(b!.id)).rejects.toMatchObject({ _tag: "WorkerNotFound" })
      } finally {
        await first.close()
        await second.close()
      }
      // Its prefix is free again once the first pool is closed.
      const third = await createPool({ size: 1, dataDir })
      expect((await third.workers())[0]?.id).toBe("default-1.1")
      await third.close()
    })
  )

  it.live("a corrupt registry file is moved aside and the pool still starts", () =>
    Effect.promise(async () => {
      const dataDir = freshDir()
      writeFileSync(join(dataDir, "registry.db"), "this is not a SQLite database".repeat(100))
      const pool = await createPool({ size: 1, dataDir })
      expect(await pool.execute("add", { a: 1, b: 1 })).toBe(2)
      await pool.close()
      expect(readdirSync(dataDir).some((f) => f.startsWith("registry.db.corrupt-"))).toBe(true)
      expect(existsSync(join(dataDir, "registry.db"))).toBe(true)
    })
  )

  it.live("a data dir that cannot be used is a ConfigError naming it", () =>
    Effect.promise(async () => {
      const file = join(freshDir(), "a-file")
      writeFileSync(file, "")
      const error = await createPool({ size: 1, dataDir: join(file, "sub") }).catch((e: unknown) => e)
      expect(error).toMatchObject({ _tag: "ConfigError", key: "dataDir" })
      expect((error as Error).message).toContain("SNAKEPIT_DATA_DIR")
    })
  )

  it.live("a data dir writable by others is a ConfigError naming it, with the fix; nothing is created in it", () =>
    Effect.promise(async () => {
      const dataDir = join(freshDir(), "shared")
      mkdirSync(dataDir)
      chmodSync(dataDir, 0o777)
      const error = await createPool({ size: 1, dataDir }).catch((e: unknown) => e)
      expect(error).toMatchObject({ _tag: "ConfigError", key: "dataDir", value: dataDir })
      expect((error as Error).message).toContain("mode 0777")
      expect((error as Error).message).toContain(`chmod 700 ${dataDir}`)
      expect(readdirSync(dataDir)).toEqual([])
    })
  )

  it.scopedLive("a full disk at start is a ConfigError for dataDir naming the error, with the fix", (ctx) =>
    Effect.gen(function* () {
      const disk = yield* Disks.tmpfs(512)
      if (disk._tag === "Unavailable") return ctx.skip(disk.reason)
      const startOn = (dataDir: string) =>
        Effect.promise(() =>
          createPool({ size: 1, dataDir, logLevel: "none" }).then(
            async (pool) => {
              await pool.close()
              return undefined
            },
            (error: unknown) => error
          )
        )
      // A registry made while there was room, then the disk filled up.
      const used = join(disk.path, "used")
      expect(yield* startOn(used)).toBeUndefined()
      Disks.fill(disk.path)
      // A fresh data dir on the full disk.
      const fresh = join(disk.path, "fresh")
      for (const [dataDir, code] of [
        [used, /SQLITE_IOERR_SHMSIZE, with 0 kB free|SQLITE_FULL/],
        [fresh, /SQLITE_FULL/]
      ] as const) {
        const error = yield* startOn(dataDir)
        expect(error).toMatchObject({ _tag: "ConfigError", key: "dataDir", value: dataDir })
        const message = (error as Error).message
        expect(message).toContain("its file system is full")
        expect(message).toMatch(code)
        expect(message).toContain(`Free space on the file system that holds ${dataDir}`)
      }
    })
  )
})
