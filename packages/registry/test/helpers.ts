/**
 * Real-process helpers for the registry tests: temporary data dirs and spawned processes
 * that are always killed by a finalizer, whatever the test's outcome.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { hostname, tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import Database from "better-sqlite3"
import { Context, Duration, Effect, Layer, Schedule, Schema } from "effect"
import { ProcessInfo, Registry, type RegistryOptions, type RegistryService, RunId } from "../src/index.js"

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

const killQuietly = (target: number) => {
  try {
    process.kill(target, "SIGKILL")
  } catch {
    // already gone
  }
}

/** A worker the host fixture started, and its two grandchildren (one outside its group). */
const HostWorker = Schema.Struct({
  pid: Schema.Number,
  inGroup: Schema.Number,
  outOfGroup: Schema.Number,
  exited: Schema.Boolean
})

const HostOutput = Schema.parseJson(
  Schema.Struct({ hostPid: Schema.Number, runId: Schema.String, workers: Schema.Array(HostWorker) })
)

/** What a host fixture started. */
export interface Host {
  readonly child: ChildProcess
  readonly hostPid: number
  readonly runId: string
  readonly workers: ReadonlyArray<typeof HostWorker.Type>
  /** Every process it started that should still be alive: its workers (but the exited ones) and grandchildren. */
  readonly processes: ReadonlyArray<number>
}

const hostScript = fileURLToPath(new URL("./fixtures/host.mjs", import.meta.url))

/**
 * Starts a host process (fixtures/host.mjs, from the built package) that takes run `runId` in
 * `dataDir` and records `workers` live workers plus `exited` workers that exit at once, each
 * with two grandchildren. When the scope closes, the host, its workers' groups and every
 * grandchild get SIGKILL, whatever the test did.
 */
export const startHost = (options: {
  readonly dataDir: string
  readonly runId: string
  readonly workers?: number
  readonly exited?: number
}) =>
  Effect.gen(function* () {
    const started: Array<number> = []
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        spawn(process.execPath, [hostScript, JSON.stringify(options)], { stdio: ["ignore", "pipe", "inherit"] })
      ),
      (child) =>
        Effect.sync(() => {
          if (child.pid !== undefined) killQuietly(child.pid)
          for (const pid of started) {
            killQuietly(-pid)
            killQuietly(pid)
          }
        })
    )
    const line = yield* Effect.async<string, Error>((resume) => {
      const lines = createInterface({ input: child.stdout! })
      lines.once("line", (text) => resume(Effect.succeed(text)))
      child.once("exit", (code, signal) => resume(Effect.fail(new Error(`the host exited (${code ?? signal})`))))
    }).pipe(
      Effect.timeoutFail({ duration: Duration.seconds(30), onTimeout: () => new Error("the host printed nothing") })
    )
    const output = yield* Schema.decodeUnknown(HostOutput)(line)
    for (const worker of output.workers) started.push(worker.pid, worker.inGroup, worker.outOfGroup)
    const processes = output.workers.flatMap((w) =>
      w.exited ? [w.inGroup, w.outOfGroup] : [w.pid, w.inGroup, w.outOfGroup]
    )
    return { child, ...output, processes } satisfies Host
  })

/**
 * Waits until `registry` sees run `runId` dead: its lock free and its owner gone. A process
 * killed with -9 shows as a zombie before its last thread has exited and dropped the lock.
 */
export const awaitRunDead = (registry: RegistryService, runId: string) =>
  Effect.gen(function* () {
    const run = (yield* registry.runs).find((r) => r.runId === runId)
    if (run === undefined) return yield* Effect.fail(new Error(`no run ${runId} recorded`))
    const liveness = yield* registry.liveness(run)
    if (liveness.alive) return yield* Effect.fail(new Error(`run ${runId} still alive: ${JSON.stringify(liveness)}`))
  }).pipe(
    Effect.retry(Schedule.spaced(Duration.millis(25))),
    Effect.timeoutFail({
      duration: Duration.seconds(10),
      onTimeout: () => new Error(`run ${runId} still alive after 10 s`)
    })
  )

/** SIGKILLs the host process (not its workers, which are detached) and waits until it is gone. */
export const killHost = (host: Host) =>
  Effect.gen(function* () {
    host.child.kill("SIGKILL")
    yield* awaitGone([host.hostPid])
  })

/** Runs `statement` with `params` straight on the database, as anyone who can write the file could. */
export const craft = (databasePath: string, statement: string, ...params: ReadonlyArray<unknown>) =>
  Effect.sync(() => {
    const db = new Database(databasePath, { timeout: 5000 })
    try {
      db.prepare(statement).run(...params)
    } finally {
      db.close()
    }
  })
