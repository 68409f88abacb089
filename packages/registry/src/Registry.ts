/**
 * The process registry: which runs (host processes) exist, which Python workers each one
 * started, and a sweep that kills the workers of runs whose host died without cleaning up.
 *
 * Stored in SQLite (`<dataDir>/registry.db`, WAL, mode 0600) so that any later host process
 * on the machine can find and prove the orphans of an earlier one.
 *
 * @since 0.1.0
 */
import { lstatSync, rmSync } from "node:fs"
import { hostname } from "node:os"
import * as Reactivity from "@effect/experimental/Reactivity"
import * as Migrator from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import { Clock, Context, Duration, Effect, Either, Layer, Metric, Schema, String as Str } from "effect"
import { exitHook } from "./ExitHook.js"
import { RegistryError, RegistryUnavailable, WorkerNotFound } from "./errors.js"
import { prepareDatabase, resolveDataDir, restrictCompanions } from "./internal/database.js"
import * as ProcessInfo from "./ProcessInfo.js"

/** A run: one host process that starts workers, identified by its run id. */
export class RunRecord extends Schema.Class<RunRecord>("RunRecord")({
  runId: Schema.String,
  ownerPid: Schema.Number,
  /** The owner's start time as {@link ProcessInfo.startTime} read it ("" when unknown). */
  ownerStartTime: Schema.String,
  host: Schema.String,
  startedAt: Schema.DateFromNumber,
  endedAt: Schema.NullOr(Schema.DateFromNumber),
  /** The unix socket its control API listens on, when it serves one. */
  controlSocket: Schema.NullOr(Schema.String)
}) {}

/** The state of a worker row: reserved before its process is spawned, active once ready. */
export const WorkerState = Schema.Literal("reserved", "active")
export type WorkerState = typeof WorkerState.Type

/** A worker row. `pid`/`pgid` are null until the process is attached or activated. */
export class WorkerRecord extends Schema.Class<WorkerRecord>("WorkerRecord")({
  workerId: Schema.String,
  runId: Schema.String,
  pid: Schema.NullOr(Schema.Number),
  pgid: Schema.NullOr(Schema.Number),
  state: WorkerState,
  startedAt: Schema.DateFromNumber
}) {}

/** A process the sweep killed (with SIGKILL): `pgid` is set when its whole group was killed. */
export interface SweptProcess {
  readonly pid: number
  readonly runId: string
  readonly pgid: number | null
  /** "row": it was a registered worker; "scan": found on the machine by its run id. */
  readonly via: "row" | "scan"
}

/** A registered pid the sweep left alone, and why (e.g. the pid was reused by another program). */
export interface SkippedProcess {
  readonly pid: number
  readonly runId: string
  readonly reason: string
}

/** What one sweep found and did. */
export interface SweepReport {
  /** Dead runs (their owner died without ending them: killed, crashed) whose rows were deleted. */
  readonly runsSwept: number
  /**
   * Runs that ended cleanly (their pools closed) and whose owner has since exited: their rows
   * were deleted too. Not dead runs: nothing went wrong with them.
   */
  readonly endedRunsRemoved: number
  readonly killed: ReadonlyArray<SweptProcess>
  readonly skipped: ReadonlyArray<SkippedProcess>
}

/** Counts processes killed by sweeps: expected to stay at zero on a healthy machine. */
export const orphansKilled = Metric.counter("snakepit_orphans_killed_total", {
  description: "Orphaned Snakepit worker processes killed by the registry sweep",
  incremental: true
})

/** Options of {@link Registry.layer}. */
export interface RegistryOptions {
  /** Directory of `registry.db`. Default: `SNAKEPIT_DATA_DIR`, else the per-user state dir. */
  readonly dataDir?: string | undefined
  /** How long a statement waits for another process's lock. Default 5 seconds. */
  readonly busyTimeout?: Duration.DurationInput | undefined
  /**
   * Install the last-resort exit hook for the groups registered through this registry
   * (see {@link installExitHook}). Default true.
   */
  readonly exitHook?: boolean | undefined
}

/** A worker row's key: worker ids are unique within their run. */
export interface WorkerKey {
  readonly workerId: string
  readonly runId: string
}

/** A worker's process, once spawned. */
export interface WorkerProcess extends WorkerKey {
  readonly pid: number
  readonly pgid: number | null
}

/** The registry's operations. Every one is a short SQLite statement or an OS read. */
export interface RegistryService {
  /** The data directory and database path in use. */
  readonly dataDir: string
  readonly databasePath: string
  /** Records this process (pid, OS start time, hostname) as the owner of `runId`. */
  readonly startRun: (runId: string) => Effect.Effect<void, RegistryError>
  /** Marks `runId` ended (its rows stay until a sweep after the owner is gone). */
  readonly endRun: (runId: string) => Effect.Effect<void, RegistryError>
  /** Records (or clears, with null) the unix socket the run's control API listens on. */
  readonly setControlSocket: (runId: string, socket: string | null) => Effect.Effect<void, RegistryError>
  /** Inserts a `reserved` worker row, before the process is spawned. */
  readonly reserveWorker: (worker: WorkerKey) => Effect.Effect<void, RegistryError>
  /**
   * Records the pid and process group of a reserved worker right after spawn, keeping it
   * `reserved` (optional: lets the exit hook and the sweep see a worker that is not ready yet).
   */
  readonly attachProcess: (worker: WorkerProcess) => Effect.Effect<void, RegistryError | WorkerNotFound>
  /** Marks the worker `active` with its pid and process group (after readiness). */
  readonly activateWorker: (worker: WorkerProcess) => Effect.Effect<void, RegistryError | WorkerNotFound>
  /** Deletes the worker row (after its process is confirmed gone). True when a row existed. */
  readonly removeWorker: (worker: WorkerKey) => Effect.Effect<boolean, RegistryError>
  /** Worker rows, of one run or of all runs. */
  readonly workers: (runId?: string) => Effect.Effect<ReadonlyArray<WorkerRecord>, RegistryError>
  /** Run rows. */
  readonly runs: Effect.Effect<ReadonlyArray<RunRecord>, RegistryError>
  /**
   * Kills the workers of runs whose owner is dead (pid gone, or reused by a process with
   * another start time), proving each from its OS command line first, plus any live process
   * carrying a dead run's id; then deletes those runs' rows. Runs that ended cleanly before
   * their owner exited are counted apart (`endedRunsRemoved`), not as dead runs, and logged
   * at Info only when something was killed or skipped. Never touches this registry's
   * own runs, runs of live owners, or runs recorded by another host.
   */
  readonly sweep: () => Effect.Effect<SweepReport, RegistryError>
  /** Process groups registered through this registry instance and not yet removed. */
  readonly registeredGroups: () => ReadonlyArray<number>
}

const migrations = Migrator.fromRecord({
  "1_create_runs_and_workers": Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`CREATE TABLE IF NOT EXISTS runs (
      run_id TEXT PRIMARY KEY NOT NULL,
      owner_pid INTEGER NOT NULL,
      owner_start_time TEXT NOT NULL,
      host TEXT NOT NULL,
      started_at INTEGER NOT NULL,
      ended_at INTEGER NULL
    )`
    yield* sql`CREATE TABLE IF NOT EXISTS workers (
      worker_id TEXT PRIMARY KEY NOT NULL,
      run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
      pid INTEGER NULL,
      pgid INTEGER NULL,
      state TEXT NOT NULL CHECK (state IN ('reserved', 'active')),
      started_at INTEGER NOT NULL
    )`
    yield* sql`CREATE INDEX IF NOT EXISTS workers_run_id ON workers (run_id)`
  }),
  // Worker ids are unique within a run only ("default-1.1" exists in every host).
  "2_workers_keyed_by_run": Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`CREATE TABLE workers_by_run (
      worker_id TEXT NOT NULL,
      run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
      pid INTEGER NULL,
      pgid INTEGER NULL,
      state TEXT NOT NULL CHECK (state IN ('reserved', 'active')),
      started_at INTEGER NOT NULL,
      PRIMARY KEY (run_id, worker_id)
    )`
    yield* sql`INSERT INTO workers_by_run SELECT worker_id, run_id, pid, pgid, state, started_at FROM workers`
    yield* sql`DROP TABLE workers`
    yield* sql`ALTER TABLE workers_by_run RENAME TO workers`
  }),
  // Where a live run serves its control API (a 0600 unix socket), for `snakepit status` and `top`.
  "3_runs_control_socket": Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`ALTER TABLE runs ADD COLUMN control_socket TEXT NULL`
  })
})

const describeFailure = (error: { readonly message: string; readonly cause?: unknown }): string => {
  const cause = error.cause instanceof Error ? error.cause.message : undefined
  return cause !== undefined && cause !== error.message ? `${error.message}: ${cause}` : error.message
}

const failWith =
  (operation: string) =>
  <A, E extends { readonly message: string; readonly cause?: unknown }, R>(effect: Effect.Effect<A, E, R>) =>
    Effect.mapError(effect, (error) => new RegistryError({ operation, reason: describeFailure(error) }))

const validRunId = (operation: string, runId: string) =>
  runId.trim() === "" || /\s/.test(runId)
    ? Effect.fail(new RegistryError({ operation, reason: `invalid run id ${JSON.stringify(runId)}` }))
    : Effect.void

type KillOutcome =
  | { readonly _tag: "Gone" }
  | { readonly _tag: "Killed"; readonly pgid: number | null }
  | { readonly _tag: "Skipped"; readonly reason: string }

const errnoCode = (error: unknown) => (error as NodeJS.ErrnoException).code

/**
 * SIGKILLs `pid` (its group when the OS confirms it leads that group, or is in the recorded
 * group, and the group is not ours) only if its command line carries `runId`.
 */
const killIfProven = (pid: number, runId: string, recordedPgid: number | null, ownPgid: number | undefined) => {
  const outcome = ((): KillOutcome => {
    if (pid === process.pid) return { _tag: "Skipped", reason: "it is this process" }
    const cmdline = ProcessInfo.commandLine(pid)
    if (cmdline === undefined || !ProcessInfo.isAlive(pid)) return { _tag: "Gone" }
    if (!ProcessInfo.carriesRunId(cmdline, runId)) {
      return {
        _tag: "Skipped",
        reason: `command line does not carry --snakepit-run-id ${runId} (pid reused by another program?)`
      }
    }
    const group = ProcessInfo.processGroup(pid)
    const killGroup = group !== undefined && group > 1 && group !== ownPgid && (group === pid || group === recordedPgid)
    if (killGroup) {
      try {
        process.kill(-group, "SIGKILL")
        return { _tag: "Killed", pgid: group }
      } catch {
        // fall back to the pid alone
      }
    }
    try {
      process.kill(pid, "SIGKILL")
      return { _tag: "Killed", pgid: null }
    } catch (error) {
      return errnoCode(error) === "ESRCH"
        ? { _tag: "Gone" }
        : { _tag: "Skipped", reason: `cannot signal it (${errnoCode(error) ?? String(error)})` }
    }
  })()
  return outcome
}

/** Removes a dead run's control socket file, if it is still there and still a socket. */
const removeStaleSocket = (socket: string): void => {
  try {
    if (lstatSync(socket).isSocket()) rmSync(socket)
  } catch (error) {
    if (errnoCode(error) !== "ENOENT") throw error
  }
}

const make = (options: RegistryOptions) =>
  Effect.gen(function* () {
    const busyTimeout = Duration.decode(options.busyTimeout ?? Duration.seconds(5))
    const busyMs = Math.max(0, Math.round(Duration.toMillis(busyTimeout)))
    const dataDir = yield* resolveDataDir(options.dataDir)
    const databasePath = yield* prepareDatabase(dataDir, busyMs)
    const unavailable = (reason: string) => new RegistryUnavailable({ dataDir, reason })

    const sql = yield* SqliteClient.make({
      filename: databasePath,
      transformResultNames: Str.snakeToCamel
    }).pipe(Effect.provide(Reactivity.layer))
    yield* Effect.gen(function* () {
      yield* sql.unsafe(`PRAGMA busy_timeout = ${busyMs}`)
      yield* sql`PRAGMA foreign_keys = ON`
      // WAL with NORMAL never corrupts the file; it may lose the last commits on power loss, when
      // every recorded process is gone anyway. FULL would fsync on each of the four writes per
      // worker, on the event loop (better-sqlite3 is synchronous).
      yield* sql`PRAGMA synchronous = NORMAL`
      const [mode] = yield* sql<{ journalMode: string }>`PRAGMA journal_mode`
      if (mode?.journalMode !== "wal")
        yield* Effect.logWarning(`snakepit registry: journal mode is ${mode?.journalMode}`)
    }).pipe(Effect.mapError((error) => unavailable(`cannot configure the database (${describeFailure(error)})`)))
    yield* Migrator.make({})({ loader: migrations, table: "snakepit_migrations" }).pipe(
      Effect.provideService(SqlClient.SqlClient, sql),
      Effect.mapError((error) => unavailable(`migrations failed (${describeFailure(error)})`))
    )
    yield* Effect.try({
      try: () => restrictCompanions(databasePath),
      catch: (error) => unavailable(`cannot restrict the WAL files to mode 0600 (${String(error)})`)
    })

    const ownRuns = new Set<string>()
    const groups = new Map<string, number>()
    const host = hostname()

    const decodeRuns = Schema.decodeUnknown(Schema.Array(RunRecord))
    const decodeWorkers = Schema.decodeUnknown(Schema.Array(WorkerRecord))

    const startRun = (runId: string) =>
      Effect.gen(function* () {
        yield* validRunId("startRun", runId)
        const now = yield* Clock.currentTimeMillis
        const start = ProcessInfo.startTime(process.pid) ?? ""
        yield* sql`INSERT INTO runs (run_id, owner_pid, owner_start_time, host, started_at, ended_at)
          VALUES (${runId}, ${process.pid}, ${start}, ${host}, ${now}, NULL)
          ON CONFLICT (run_id) DO UPDATE SET owner_pid = excluded.owner_pid,
            owner_start_time = excluded.owner_start_time, host = excluded.host,
            started_at = excluded.started_at, ended_at = NULL, control_socket = NULL`.pipe(failWith("startRun"))
        ownRuns.add(runId)
      })

    const endRun = (runId: string) =>
      Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis
        yield* sql`UPDATE runs SET ended_at = ${now}, control_socket = NULL WHERE run_id = ${runId}`.pipe(
          failWith("endRun")
        )
      })

    const setControlSocket = (runId: string, socket: string | null) =>
      sql`UPDATE runs SET control_socket = ${socket} WHERE run_id = ${runId}`.pipe(
        Effect.asVoid,
        failWith("setControlSocket")
      )

    const reserveWorker = ({ workerId, runId }: { readonly workerId: string; readonly runId: string }) =>
      Effect.gen(function* () {
        const run = yield* sql`SELECT run_id FROM runs WHERE run_id = ${runId}`.pipe(failWith("reserveWorker"))
        if (run.length === 0) {
          return yield* new RegistryError({
            operation: "reserveWorker",
            reason: `run ${runId} is not started: call startRun first`
          })
        }
        const now = yield* Clock.currentTimeMillis
        yield* sql`INSERT INTO workers (worker_id, run_id, pid, pgid, state, started_at)
          VALUES (${workerId}, ${runId}, NULL, NULL, 'reserved', ${now})`.pipe(failWith("reserveWorker"))
      })

    const setProcess =
      (operation: string, state: WorkerState) =>
      ({ workerId, runId, pid, pgid }: WorkerProcess) =>
        Effect.gen(function* () {
          const updated = yield* sql`UPDATE workers SET pid = ${pid}, pgid = ${pgid}, state = ${state}
            WHERE run_id = ${runId} AND worker_id = ${workerId} RETURNING worker_id`.pipe(failWith(operation))
          if (updated.length === 0) return yield* new WorkerNotFound({ workerId })
          groups.set(`${runId}/${workerId}`, pgid ?? pid)
        })

    const removeWorker = ({ workerId, runId }: WorkerKey) =>
      Effect.gen(function* () {
        const removed = yield* sql`DELETE FROM workers WHERE run_id = ${runId} AND worker_id = ${workerId}
          RETURNING worker_id`.pipe(failWith("removeWorker"))
        groups.delete(`${runId}/${workerId}`)
        return removed.length > 0
      })

    const workers = (runId?: string) =>
      (runId === undefined
        ? sql`SELECT * FROM workers ORDER BY started_at, worker_id`
        : sql`SELECT * FROM workers WHERE run_id = ${runId} ORDER BY started_at, worker_id`
      ).pipe(Effect.flatMap(decodeWorkers), failWith("workers"))

    const runs = sql`SELECT * FROM runs ORDER BY started_at, run_id`.pipe(Effect.flatMap(decodeRuns), failWith("runs"))

    const sweep = () =>
      Effect.gen(function* () {
        const all = yield* runs
        // Runs whose owner process is gone, ended cleanly or not.
        const gone = all.filter(
          (run) =>
            !ownRuns.has(run.runId) && run.host === host && !ProcessInfo.isOwnerAlive(run.ownerPid, run.ownerStartTime)
        )
        const killed: Array<SweptProcess> = []
        const skipped: Array<SkippedProcess> = []
        if (gone.length > 0) {
          const ownPgid = ProcessInfo.processGroup(process.pid)
          const handled = new Set<number>()
          for (const run of gone) {
            for (const worker of yield* workers(run.runId)) {
              if (worker.pid === null || handled.has(worker.pid)) continue
              handled.add(worker.pid)
              const outcome = killIfProven(worker.pid, run.runId, worker.pgid, ownPgid)
              if (outcome._tag === "Killed")
                killed.push({ pid: worker.pid, runId: run.runId, pgid: outcome.pgid, via: "row" })
              if (outcome._tag === "Skipped")
                skipped.push({ pid: worker.pid, runId: run.runId, reason: outcome.reason })
            }
          }
          for (const [pid, cmdline] of ProcessInfo.allProcesses()) {
            if (handled.has(pid)) continue
            const run = gone.find((candidate) => ProcessInfo.carriesRunId(cmdline, candidate.runId))
            if (run === undefined) continue
            handled.add(pid)
            const outcome = killIfProven(pid, run.runId, null, ownPgid)
            if (outcome._tag === "Killed") killed.push({ pid, runId: run.runId, pgid: outcome.pgid, via: "scan" })
            if (outcome._tag === "Skipped") skipped.push({ pid, runId: run.runId, reason: outcome.reason })
          }
          for (const run of gone) {
            const socket = run.controlSocket
            if (socket !== null) {
              const removed = Either.try(() => removeStaleSocket(socket))
              if (Either.isLeft(removed)) {
                yield* Effect.logWarning(`snakepit registry sweep: cannot remove ${socket}: ${String(removed.left)}`)
              }
            }
            yield* sql`DELETE FROM workers WHERE run_id = ${run.runId}`.pipe(failWith("sweep"))
            yield* sql`DELETE FROM runs WHERE run_id = ${run.runId}`.pipe(failWith("sweep"))
          }
        }
        // A run that ended cleanly and whose owner has since exited is not dead: its rows are
        // only tidied away. Only runs whose owner died without ending them are dead.
        const crashed = gone.filter((run) => run.endedAt === null).length
        const ended = gone.length - crashed
        const report: SweepReport = { runsSwept: crashed, endedRunsRemoved: ended, killed, skipped }
        yield* Metric.incrementBy(orphansKilled, killed.length)
        const log = crashed > 0 || killed.length > 0 || skipped.length > 0 ? Effect.logInfo : Effect.logDebug
        yield* log(
          `snakepit registry sweep: ${crashed} dead run(s) swept, ${killed.length} orphan process(es) killed` +
            (killed.length > 0 ? ` (pids ${killed.map((k) => k.pid).join(", ")})` : "") +
            `, ${skipped.length} skipped` +
            (skipped.length > 0 ? ` (${skipped.map((s) => `${s.pid}: ${s.reason}`).join("; ")})` : "") +
            (ended > 0 ? `; ${ended} cleanly ended run(s) cleaned up` : "")
        ).pipe(
          Effect.annotateLogs({
            dataDir,
            runsSwept: crashed,
            endedRunsRemoved: ended,
            killed: killed.length,
            skipped: skipped.length
          })
        )
        return report
      })

    const registeredGroups = () => [...new Set(groups.values())]
    if (options.exitHook !== false) yield* exitHook(registeredGroups)

    return {
      dataDir,
      databasePath,
      startRun,
      endRun,
      setControlSocket,
      reserveWorker,
      attachProcess: setProcess("attachProcess", "reserved"),
      activateWorker: setProcess("activateWorker", "active"),
      removeWorker,
      workers,
      runs,
      sweep,
      registeredGroups
    } satisfies RegistryService
  })

/** The process registry service. */
export class Registry extends Context.Tag("@snakepit/registry/Registry")<Registry, RegistryService>() {
  /**
   * Opens (creating if needed) `<dataDir>/registry.db`, runs migrations, and installs the
   * last-resort exit hook for the lifetime of the layer. A corrupt database is moved aside
   * and recreated with a warning; a data directory that cannot be created or written fails
   * with {@link RegistryUnavailable}.
   */
  static readonly layer = (options: RegistryOptions = {}): Layer.Layer<Registry, RegistryUnavailable> =>
    Layer.scoped(Registry, make(options))

  /**
   * The data directory the layer would use for `dataDir` (the option, else `SNAKEPIT_DATA_DIR`,
   * else the per-user state directory), as an absolute path. Creates nothing.
   */
  static readonly resolveDataDir = (dataDir?: string | undefined): Effect.Effect<string, RegistryUnavailable> =>
    resolveDataDir(dataDir)
}
