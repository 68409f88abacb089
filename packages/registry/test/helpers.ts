/**
 * Real-process helpers for the registry tests: temporary data dirs and spawned processes
 * that are always killed by a finalizer, whatever the test's outcome.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { hostname, tmpdir } from "node:os"
import { join } from "node:path"
import Database from "better-sqlite3"
import { Context, Duration, Effect, Layer, Schedule } from "effect"
import { ProcessInfo, Registry, type RegistryOptions, RunId } from "../src/index.js"

/** A fresh temporary directory, removed when the scope closes. */
export const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "snakepit-registry-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

/** A Registry instance built in the current scope (several may share one data dir). */
export const registryIn = (dataDir: string, options: Omit<RegistryOptions, "dataDir"> = {}) =>
  registryFrom(Registry.layer({ ...options, dataDir }))

/** The Registry service of `layer`, built in the current scope. */
export const registryFrom = <E>(layer: Layer.Layer<Registry, E>) =>
  Layer.build(layer).pipe(Effect.map((context) => Context.get(context, Registry)))

/** Waits, polling every 25 ms, until `condition` holds; fails with `describe` after `timeout`. */
export const awaitCondition = (
  describe: () => string,
  condition: () => boolean,
  timeout: Duration.DurationInput = Duration.seconds(10)
): Effect.Effect<void, Error> =>
  Effect.suspend(() => (condition() ? Effect.void : Effect.fail(new Error(describe())))).pipe(
    Effect.retry(Schedule.spaced(Duration.millis(25))),
    Effect.timeoutFail({
      duration: timeout,
      onTimeout: () => new Error(`timed out after ${Duration.format(timeout)}: ${describe()}`)
    })
  )

/** Waits until none of `pids` is alive (a zombie counts as gone). */
export const awaitGone = (pids: ReadonlyArray<number>) =>
  awaitCondition(
    () => `processes still alive: ${pids.filter(ProcessInfo.isAlive).join(", ")}`,
    () => !pids.some(ProcessInfo.isAlive)
  )

/** A spawned process: its pid, and the child handle (for its exit). */
export interface Spawned {
  readonly pid: number
  readonly child: ChildProcess
}

/**
 * Spawns `command args` detached (its own process group), waits until its command line is
 * the new program's, and SIGKILLs its group and itself when the scope closes.
 */
export const spawnDetached = (command: string, args: ReadonlyArray<string>) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const child = spawn(command, [...args], { detached: true, stdio: "ignore" })
      child.on("error", () => {})
      return child
    }),
    (child) =>
      Effect.sync(() => {
        if (child.pid === undefined) return
        for (const target of [-child.pid, child.pid]) {
          try {
            process.kill(target, "SIGKILL")
          } catch {
            // already gone
          }
        }
      })
  ).pipe(
    Effect.tap((child) =>
      awaitCondition(
        () => `process ${command} did not start (pid ${child.pid})`,
        () => child.pid !== undefined && (ProcessInfo.commandLine(child.pid) ?? "").includes(args.at(-1) ?? command)
      )
    ),
    Effect.map((child): Spawned => ({ pid: child.pid!, child }))
  )

/** A Python process that sleeps and carries `--snakepit-run-id <runId>`, like a worker. */
export const spawnPythonOf = (runId: string) =>
  spawnDetached("/usr/bin/python3", ["-c", "import time; time.sleep(60)", "--snakepit-run-id", runId])

/** A live process that does NOT carry any run id (stands in for a reused pid). */
export const spawnUnrelated = () => spawnDetached("/bin/sleep", ["61"])

/** The pid and start time of a process that has exited: a dead owner. */
export const deadOwner = Effect.scoped(
  Effect.gen(function* () {
    const spawned = yield* spawnDetached("/bin/sleep", ["59"])
    const startTime = ProcessInfo.startTime(spawned.pid)!
    process.kill(spawned.pid, "SIGKILL")
    yield* awaitGone([spawned.pid])
    return { pid: spawned.pid, startTime }
  })
)

/** Inserts a run row for an owner other than this process, straight into the database. */
export const insertRun = (
  databasePath: string,
  run: {
    readonly runId: string
    readonly ownerPid: number
    readonly ownerStartTime: string
    readonly host?: string
    /** When the run ended cleanly (its pools closed); default: not ended. */
    readonly endedAt?: number
  }
) =>
  Effect.sync(() => {
    const db = new Database(databasePath, { timeout: 5000 })
    try {
      db.prepare(
        "INSERT INTO runs (run_id, owner_pid, owner_start_time, host, started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?)"
      ).run(run.runId, run.ownerPid, run.ownerStartTime, run.host ?? hostname(), Date.now(), run.endedAt ?? null)
    } finally {
      db.close()
    }
  })

/** A fresh, valid run id. */
export const newRunId = () => RunId.generate()
