/**
 * The process registry: which runs (host processes) exist, which Python workers each one
 * started, and a sweep that kills the workers of runs whose host died without cleaning up.
 *
 * Stored in SQLite (`<dataDir>/registry.db`, WAL, mode 0600) so that any later host process
 * on the machine can find and prove the orphans of an earlier one. The rows are never proof on
 * their own: a run is dead only when the OS lock its host held is free, and a process is killed
 * only when the OS shows it is the one recorded (see {@link Ownership}).
 *
 * @since 0.1.0
 */
import { lstatSync, rmSync } from "node:fs"
import { hostname } from "node:os"
import { dirname, join, resolve } from "node:path"
import * as Reactivity from "@effect/experimental/Reactivity"
import * as Migrator from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlError from "@effect/sql/SqlError"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import Database from "better-sqlite3"
import { Clock, Context, Duration, Effect, Either, Layer, Metric, Option, Schema, String as Str } from "effect"
import { exitHook } from "./ExitHook.js"
import { RegistryError, RegistryUnavailable, WorkerNotFound } from "./errors.js"
import {
  describeError,
  diskFull,
  diskFullFix,
  prepareDatabase,
  resolveDataDir,
  restrictCompanions
} from "./internal/database.js"
import * as RunLock from "./internal/runLock.js"
import * as Ownership from "./Ownership.js"
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

/**
 * A worker row. `pid`/`pgid`/`startTime` are null until the process is attached or activated;
 * `startTime` is what the OS said when the registry recorded the pid ({@link ProcessInfo.startTime}).
 */
export class WorkerRecord extends Schema.Class<WorkerRecord>("WorkerRecord")({
  workerId: Schema.String,
  runId: Schema.String,
  pid: Schema.NullOr(Schema.Number),
  pgid: Schema.NullOr(Schema.Number),
  startTime: Schema.NullOr(Schema.String),
  state: WorkerState,
  startedAt: Schema.DateFromNumber
}) {}

/** A process the sweep killed (with SIGKILL): `pgid` is set when its whole group was killed. */
export interface SweptProcess {
  readonly pid: number
  readonly runId: string
  readonly pgid: number | null
  /**
   * "row": a registered worker, proven by its pid, start time and run id; "session": a process in
   * the session of such a worker (a tool's child), proven by its session id and start time.
   */
  readonly via: "row" | "session"
}

/**
 * Whether a run's host is alive: `lock` is what the OS says of the run's lock file, `ownerAlive`
 * whether the recorded owner pid still runs with the recorded start time. A run is dead only when
 * both say no (the second keeps hosts that predate run locks alive, and never makes a run dead).
 */
export interface RunLiveness {
  readonly alive: boolean
  readonly lock: "held" | "free" | "unknown"
  readonly ownerAlive: boolean
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
  /**
   * Takes the run's OS lock (`<dataDir>/runs/<runId>.lock`, held until `endRun` or this process
   * dies), then records this process (pid, OS start time, hostname) as the owner of `runId`.
   * Run ids are letters, digits, `.`, `_` and `-` (at most 128, not starting with a dot).
   */
  readonly startRun: (runId: string) => Effect.Effect<void, RegistryError | RegistryUnavailable>
  /**
   * Gives back one `startRun`. When this process no longer runs `runId` (every `startRun` of it
   * here has ended), marks it ended and releases and removes its lock. Its rows stay until a
   * sweep after the owner is gone.
   */
  readonly endRun: (runId: string) => Effect.Effect<void, RegistryError>
  /** Records (or clears, with null) the unix socket the run's control API listens on. */
  readonly setControlSocket: (runId: string, socket: string | null) => Effect.Effect<void, RegistryError>
  /** Inserts a `reserved` worker row, before the process is spawned. */
  readonly reserveWorker: (worker: WorkerKey) => Effect.Effect<void, RegistryError>
  /**
   * Records the pid and process group of a reserved worker right after spawn, keeping it
   * `reserved` (optional: lets the exit hook and the sweep see a worker that is not ready yet).
   * The registry reads the process's start time from the OS itself: a later sweep kills the pid
   * only while it is still that process.
   */
  readonly attachProcess: (worker: WorkerProcess) => Effect.Effect<void, RegistryError | WorkerNotFound>
  /** Marks the worker `active` with its pid and process group (after readiness); reads the start time as attachProcess. */
  readonly activateWorker: (worker: WorkerProcess) => Effect.Effect<void, RegistryError | WorkerNotFound>
  /** Deletes the worker row (after its process is confirmed gone). True when a row existed. */
  readonly removeWorker: (worker: WorkerKey) => Effect.Effect<boolean, RegistryError>
  /** Worker rows, of one run or of all runs. */
  readonly workers: (runId?: string) => Effect.Effect<ReadonlyArray<WorkerRecord>, RegistryError>
  /** Run rows. */
  readonly runs: Effect.Effect<ReadonlyArray<RunRecord>, RegistryError>
  /** Whether `run`'s host is alive, from its OS lock (and the recorded owner, see {@link RunLiveness}). */
  readonly liveness: (run: RunRecord) => Effect.Effect<RunLiveness>
  /**
   * Kills what dead runs left behind, then deletes those runs' rows and lock files. A run is dead
   * when its lock is free and its recorded owner is gone. Of a dead run it kills each worker that
   * is proven the recorded process (pid, start time, run id: {@link Ownership.proveWorker}), its
   * process group only when the worker leads it, and the members of the worker's session
   * ({@link Ownership.sessionMembers}). A process that merely carries a dead run's id on its
   * command line is reported in `skipped`, never killed. Runs that ended cleanly before their
   * owner exited are counted apart (`endedRunsRemoved`), not as dead runs, and logged at Info
   * only when something was killed or skipped. Never touches this registry's own runs, runs of
   * live hosts, or runs recorded by another host.
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
  }),
  // What the OS said of the pid when it was recorded: a pid is ours only while it still says so.
  "4_workers_start_time": Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`ALTER TABLE workers ADD COLUMN start_time TEXT NULL`
  })
})

const describeFailure = (error: { readonly message: string; readonly cause?: unknown }): string => {
  const cause = error.cause instanceof Error ? describeError(error.cause) : undefined
  return cause !== undefined && cause !== error.message ? `${error.message}: ${cause}` : error.message
}

const failWith =
  (operation: string) =>
  <A, E extends { readonly message: string; readonly cause?: unknown }, R>(effect: Effect.Effect<A, E, R>) =>
    Effect.mapError(effect, (error) => new RegistryError({ operation, reason: describeFailure(error) }))

const validRunId = (operation: string, runId: string) =>
  RunLock.isSafeRunId(runId)
    ? Effect.void
    : Effect.fail(
        new RegistryError({
          operation,
          reason: `invalid run id ${JSON.stringify(runId)} (letters, digits, ".", "_" and "-", at most 128, not starting with ".")`
        })
      )

/** SIGKILL to `target` (a pid, or a group as -pgid): "sent", "gone", or the errno that stopped it. */
const sigkill = (target: number): string => {
  try {
    process.kill(target, "SIGKILL")
    return "sent"
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    return code === "ESRCH" ? "gone" : (code ?? String(error))
  }
}

/** What one sweep has done so far, and what it must never touch. */
interface SweepState {
  readonly killed: Array<SweptProcess>
  readonly skipped: Array<SkippedProcess>
  /** Pids already dealt with (killed, skipped, or killed with their group). */
  readonly handled: Set<number>
  readonly ownPgid: number | undefined
  readonly ownSession: number | undefined
}

/** Session members are read again after each round of kills, for those forked meanwhile; bounded. */
const SESSION_ROUNDS = 5

/**
 * Kills what the worker of `row` left behind, each process only once proven ours
 * ({@link Ownership}): the worker (and its group when it leads it), then its session's members.
 */
const sweepWorker = (row: WorkerRecord, state: SweepState): void => {
  if (row.pid === null) return
  const pid = row.pid
  const { runId } = row
  state.handled.add(pid)
  const proof = Ownership.proveWorker(row)
  if (proof._tag === "NotOurs") {
    state.skipped.push({ pid, runId, reason: proof.reason })
    return
  }
  let groupKilled = false
  if (proof._tag === "Ours") {
    const killGroup = proof.leadsGroup && pid !== state.ownPgid
    const table = killGroup ? ProcessInfo.processTable() : []
    const result = sigkill(killGroup ? -pid : pid)
    if (result === "sent") {
      state.killed.push({ pid, runId, pgid: killGroup ? pid : null, via: "row" })
      groupKilled = killGroup
      // Killed with their group: not reported again as session members (nor as suspicious).
      for (const entry of table) if (entry.processGroup === pid) state.handled.add(entry.pid)
    } else if (result !== "gone") {
      state.skipped.push({ pid, runId, reason: `cannot signal it (${result})` })
    }
  }
  if (state.ownSession === pid) return // this process runs inside that session: never kill it from within
  for (let round = 0; round < SESSION_ROUNDS; round++) {
    const members = Ownership.sessionMembers(row, proof, ProcessInfo.processTable()).filter(
      (entry) =>
        !state.handled.has(entry.pid) && entry.pid !== state.ownPgid && !(groupKilled && entry.processGroup === pid)
    )
    if (members.length === 0) return
    for (const entry of members) {
      state.handled.add(entry.pid)
      if (!Ownership.stillInSession(entry, pid)) continue
      const result = sigkill(entry.pid)
      if (result === "sent") state.killed.push({ pid: entry.pid, runId, pgid: null, via: "session" })
      else if (result !== "gone") state.skipped.push({ pid: entry.pid, runId, reason: `cannot signal it (${result})` })
    }
  }
}

const causeOf = (error: unknown): unknown => (error as { readonly cause?: unknown } | undefined)?.cause

/**
 * Removes a dead run's control socket file, if it is still there and still a socket, and only
 * where Snakepit puts them (`<dataDir>/control/<runId>.sock`): the path comes from a row, and a
 * row may name any file.
 */
const removeStaleSocket = (dataDir: string, runId: string, socket: string): void => {
  const expected = join(dataDir, "control", `${runId}.sock`)
  if (resolve(socket) !== expected || dirname(expected) !== join(dataDir, "control")) return
  try {
    if (lstatSync(expected).isSocket()) rmSync(expected)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error
  }
}

const make = (options: RegistryOptions) =>
  Effect.gen(function* () {
    const busyTimeout = Duration.decode(options.busyTimeout ?? Duration.seconds(5))
    const busyMs = Math.max(0, Math.round(Duration.toMillis(busyTimeout)))
    const dataDir = yield* resolveDataDir(options.dataDir)
    const databasePath = yield* prepareDatabase(dataDir, busyMs)
    /** A failure that makes the registry unusable; a full file system gets its own fix. */
    const unavailable = (reason: string, error?: unknown) => {
      const full = error === undefined ? undefined : (diskFull(error, dataDir) ?? diskFull(causeOf(error), dataDir))
      return full !== undefined
        ? new RegistryUnavailable({
            dataDir,
            reason: `its file system is full (${full}): ${reason}`,
            fix: diskFullFix(dataDir)
          })
        : new RegistryUnavailable({ dataDir, reason })
    }

    const sql = yield* SqliteClient.make({
      filename: databasePath,
      transformResultNames: Str.snakeToCamel,
      // Set by prepareDatabase, where a failure is typed; the client's own pragma would throw a defect.
      disableWAL: true
    }).pipe(
      Effect.provide(Reactivity.layer),
      // The client opens the file in its constructor, where SQLite's errors are thrown (defects).
      Effect.catchSomeDefect((defect) =>
        defect instanceof Database.SqliteError
          ? Option.some(Effect.fail(unavailable(`cannot open ${databasePath} (${describeError(defect)})`, defect)))
          : Option.none()
      )
    )
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
    }).pipe(Effect.mapError((error) => unavailable(`cannot configure the database (${describeFailure(error)})`, error)))
    yield* Migrator.make({})({ loader: migrations, table: "snakepit_migrations" }).pipe(
      Effect.provideService(SqlClient.SqlClient, sql),
      Effect.mapError((error) => unavailable(`migrations failed (${describeFailure(error)})`, error))
    )
    yield* Effect.try({
      try: () => restrictCompanions(databasePath),
      catch: (error) => unavailable(`cannot restrict the WAL files to mode 0600 (${describeError(error)})`)
    })

    const ownRuns = new Set<string>()
    /** How many `startRun`s of each run this instance holds (each holds one count of the run lock). */
    const heldRuns = new Map<string, number>()
    /** Registered workers, by `<run>/<worker>`: their group and the start time of its leader. */
    const groups = new Map<
      string,
      { readonly pgid: number; readonly leader: number; readonly startTime: string | null }
    >()
    const host = hostname()

    // Whatever ends this registry, its locks go with it (the kernel would release them at exit anyway).
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        for (const [runId, count] of heldRuns) for (let i = 0; i < count; i++) RunLock.release(dataDir, runId)
        heldRuns.clear()
      })
    )

    const decodeRuns = Schema.decodeUnknown(Schema.Array(RunRecord))
    const decodeWorkers = Schema.decodeUnknown(Schema.Array(WorkerRecord))

    /** A failed write that recorded nothing: a full file system is RegistryUnavailable, with its fix. */
    const failWrite =
      (operation: string) =>
      <A, R>(effect: Effect.Effect<A, SqlError.SqlError, R>) =>
        Effect.mapError(effect, (error) =>
          diskFull(error.cause, dataDir) !== undefined
            ? unavailable(`${operation} could not write (${describeFailure(error)})`, error)
            : new RegistryError({ operation, reason: describeFailure(error) })
        )

    const startRun = (runId: string) =>
      Effect.gen(function* () {
        yield* validRunId("startRun", runId)
        // The lock first: from the moment the row exists, the run is provably alive.
        yield* Effect.try({
          try: () => RunLock.acquire(dataDir, runId),
          catch: (error) =>
            diskFull(error, dataDir) !== undefined
              ? unavailable(`cannot create the lock of run ${runId} (${describeError(error)})`, error)
              : new RegistryError({ operation: "startRun", reason: describeError(error) })
        })
        heldRuns.set(runId, (heldRuns.get(runId) ?? 0) + 1)
        const now = yield* Clock.currentTimeMillis
        const start = ProcessInfo.startTime(process.pid) ?? ""
        yield* sql`INSERT INTO runs (run_id, owner_pid, owner_start_time, host, started_at, ended_at)
          VALUES (${runId}, ${process.pid}, ${start}, ${host}, ${now}, NULL)
          ON CONFLICT (run_id) DO UPDATE SET owner_pid = excluded.owner_pid,
            owner_start_time = excluded.owner_start_time, host = excluded.host,
            started_at = excluded.started_at, ended_at = NULL, control_socket = NULL`.pipe(
          failWrite("startRun"),
          Effect.tapError(() => Effect.sync(() => releaseOne(runId)))
        )
        ownRuns.add(runId)
      })

    /** Gives back one count of this instance's hold on `runId`'s lock. */
    const releaseOne = (runId: string) => {
      const count = heldRuns.get(runId) ?? 0
      if (count === 0) return
      if (count === 1) heldRuns.delete(runId)
      else heldRuns.set(runId, count - 1)
      RunLock.release(dataDir, runId)
    }

    const endRun = (runId: string) =>
      Effect.gen(function* () {
        const mine = (heldRuns.get(runId) ?? 0) > 0
        // Another startRun of this run in this process still runs: it is not over.
        if ((mine && RunLock.holds(dataDir, runId) > 1) || (!mine && RunLock.holds(dataDir, runId) > 0)) {
          if (mine) releaseOne(runId)
          return
        }
        const now = yield* Clock.currentTimeMillis
        // Marked ended before the lock goes, so that no moment shows it dead.
        yield* sql`UPDATE runs SET ended_at = ${now}, control_socket = NULL WHERE run_id = ${runId}`.pipe(
          failWith("endRun"),
          Effect.ensuring(Effect.sync(() => releaseOne(runId)))
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
          // Read here, from the OS, so that no caller can record a start time it made up; kept
          // from attach to activation (the same process: the pid cannot change while it lives).
          const start = ProcessInfo.startTime(pid) ?? null
          const updated = yield* sql<{ startTime: string | null }>`UPDATE workers SET
            start_time = CASE WHEN pid = ${pid} AND start_time IS NOT NULL THEN start_time ELSE ${start} END,
            pid = ${pid}, pgid = ${pgid}, state = ${state}
            WHERE run_id = ${runId} AND worker_id = ${workerId} RETURNING start_time`.pipe(failWith(operation))
          if (updated.length === 0) return yield* new WorkerNotFound({ workerId })
          groups.set(`${runId}/${workerId}`, { pgid: pgid ?? pid, leader: pid, startTime: updated[0]!.startTime })
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

    const livenessOf = (run: RunRecord): RunLiveness => {
      const lock = RunLock.probe(dataDir, run.runId)
      const ownerAlive = ProcessInfo.isOwnerAlive(run.ownerPid, run.ownerStartTime)
      return { alive: lock !== "free" || ownerAlive, lock, ownerAlive }
    }

    const sweep = () =>
      Effect.gen(function* () {
        const all = yield* runs
        // Runs whose host is gone (lock free, owner gone), ended cleanly or not.
        const gone = all.filter((run) => !ownRuns.has(run.runId) && run.host === host && !livenessOf(run).alive)
        const state: SweepState = {
          killed: [],
          skipped: [],
          handled: new Set(),
          ownPgid: ProcessInfo.processGroup(process.pid),
          ownSession: ProcessInfo.sessionId(process.pid)
        }
        if (gone.length > 0) {
          for (const run of gone) {
            for (const worker of yield* workers(run.runId)) sweepWorker(worker, state)
          }
          for (const { pid, runId } of Ownership.suspicious(
            gone.map((run) => run.runId),
            state.handled
          )) {
            state.skipped.push({
              pid,
              runId,
              reason: `it carries --snakepit-run-id ${runId} on its command line but is not a recorded worker nor in a worker's session: a run id can be copied, so it is never killed on that alone`
            })
          }
          for (const run of gone) {
            const socket = run.controlSocket
            if (socket !== null) {
              const removed = Either.try(() => removeStaleSocket(dataDir, run.runId, socket))
              if (Either.isLeft(removed)) {
                yield* Effect.logWarning(`snakepit registry sweep: cannot remove ${socket}: ${String(removed.left)}`)
              }
            }
            yield* sql`DELETE FROM workers WHERE run_id = ${run.runId}`.pipe(failWith("sweep"))
            yield* sql`DELETE FROM runs WHERE run_id = ${run.runId}`.pipe(failWith("sweep"))
            RunLock.removeIfFree(dataDir, run.runId)
          }
        }
        // Lock files without a run row: hosts that died between taking the lock and writing the row.
        const known = new Set(all.map((run) => run.runId))
        for (const runId of RunLock.lockedRunIds(dataDir)) if (!known.has(runId)) RunLock.removeIfFree(dataDir, runId)
        const { killed, skipped } = state
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

    // A group whose leader pid now runs with another start time is someone else's: the exit hook
    // must not kill it (our group ended when the pid was freed).
    const registeredGroups = () => {
      const live: Array<number> = []
      for (const { pgid, leader, startTime } of groups.values()) {
        const now = startTime === null ? undefined : ProcessInfo.startTime(leader)
        if (now === undefined || now === startTime) live.push(pgid)
      }
      return [...new Set(live)]
    }
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
      liveness: (run) => Effect.sync(() => livenessOf(run)),
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
