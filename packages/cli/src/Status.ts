/**
 * `snakepit status`: what the process registry records, checked against the operating system.
 * Each run (its owner process alive or not), each worker (its process alive, gone, or a pid
 * now used by another program), and the orphans: live processes of runs whose owner is dead.
 *
 * @since 0.1.0
 */
import { hostname } from "node:os"
import { Command } from "@effect/cli"
import {
  ProcessInfo,
  Registry,
  type RegistryError,
  type RunRecord,
  type WorkerRecord,
  type WorkerState
} from "@snakepit/registry"
import { Console, Effect, Option } from "effect"
import { DiagnosticFailure } from "./errors.js"
import { type DataDirSource, dataDirArgument, dataDirSource, registryLayer } from "./internal/dataDir.js"
import { count, formatDate, table } from "./internal/format.js"
import * as SharedOptions from "./internal/options.js"
import { existingDataDir, reportRegistryFailure } from "./internal/registryFailure.js"

/**
 * What the OS says about a recorded process: `alive` (and its command line carries the run's id),
 * `gone`, `reused` (the pid is alive but runs another program: not ours, never killed),
 * `unspawned` (a reserved row without a pid yet), `unknown` (recorded by another host).
 */
export type ProcessState = "alive" | "gone" | "reused" | "unspawned" | "unknown"

/**
 * A run's state: `live` (owner alive, not ended), `ended` (its pools closed), `dead` (owner gone
 * without ending the run: killed or crashed), `other-host` (recorded by another machine).
 */
export type RunState = "live" | "ended" | "dead" | "other-host"

/** One process of a run: a registered worker, or a live process carrying the run id without a row. */
export interface ProcessStatus {
  /** The worker id, or null for an unregistered process (a tool's grandchild, a worker never attached). */
  readonly workerId: string | null
  readonly pid: number | null
  readonly pgid: number | null
  /** The row's state, or "unregistered". */
  readonly state: WorkerState | "unregistered"
  readonly startedAt: Date | null
  readonly process: ProcessState
  /** Alive while its run's owner is dead: `snakepit sweep` kills it. */
  readonly orphan: boolean
}

/** One run of the registry, with its processes. */
export interface RunStatus {
  readonly runId: string
  readonly ownerPid: number
  /** Null when the run was recorded by another host (its pids mean nothing here). */
  readonly ownerAlive: boolean | null
  readonly host: string
  readonly state: RunState
  readonly startedAt: Date
  readonly endedAt: Date | null
  readonly processes: ReadonlyArray<ProcessStatus>
}

/** A live process of a dead run. */
export interface Orphan {
  readonly pid: number
  readonly runId: string
  readonly ownerPid: number
  readonly workerId: string | null
}

/** Counts for the summary line. */
export interface StatusSummary {
  readonly runs: number
  readonly liveRuns: number
  readonly processesAlive: number
  readonly orphans: number
}

/** Everything `snakepit status` shows. */
export interface StatusReport {
  readonly dataDir: string
  readonly databasePath: string
  readonly runs: ReadonlyArray<RunStatus>
  readonly orphans: ReadonlyArray<Orphan>
  readonly summary: StatusSummary
}

const processState = (pid: number | null, runId: string, local: boolean): ProcessState => {
  if (!local) return "unknown"
  if (pid === null) return "unspawned"
  const cmdline = ProcessInfo.commandLine(pid)
  if (cmdline === undefined || !ProcessInfo.isAlive(pid)) return "gone"
  return ProcessInfo.carriesRunId(cmdline, runId) ? "alive" : "reused"
}

const runStatus = (
  run: RunRecord,
  rows: ReadonlyArray<WorkerRecord>,
  machine: ReadonlyArray<readonly [number, string]>,
  here: string
): RunStatus => {
  const local = run.host === here
  const ownerAlive = local ? ProcessInfo.isOwnerAlive(run.ownerPid, run.ownerStartTime) : null
  const orphaned = ownerAlive === false
  const registered = rows.map((row): ProcessStatus => {
    const process = processState(row.pid, run.runId, local)
    return {
      workerId: row.workerId,
      pid: row.pid,
      pgid: row.pgid,
      state: row.state,
      startedAt: row.startedAt,
      process,
      orphan: orphaned && process === "alive"
    }
  })
  const known = new Set(rows.flatMap((row) => (row.pid === null ? [] : [row.pid])))
  // The same scan the sweep makes: live processes carrying the run id that no row names.
  const unregistered = local
    ? machine
        .filter(([pid, cmdline]) => !known.has(pid) && ProcessInfo.carriesRunId(cmdline, run.runId))
        .filter(([pid]) => ProcessInfo.isAlive(pid))
        .map(
          ([pid]): ProcessStatus => ({
            workerId: null,
            pid,
            pgid: ProcessInfo.processGroup(pid) ?? null,
            state: "unregistered",
            startedAt: null,
            process: "alive",
            orphan: orphaned
          })
        )
    : []
  return {
    runId: run.runId,
    ownerPid: run.ownerPid,
    ownerAlive,
    host: run.host,
    state: !local ? "other-host" : run.endedAt !== null ? "ended" : ownerAlive ? "live" : "dead",
    startedAt: run.startedAt,
    endedAt: run.endedAt,
    processes: [...registered, ...unregistered]
  }
}

/**
 * Reads every run and worker of the registry and checks each against the OS (never trusting the
 * rows alone). Orphans are found the way the sweep finds them, so `status` and `sweep` agree.
 */
export const inspect: Effect.Effect<StatusReport, RegistryError, Registry> = Effect.gen(function* () {
  const registry = yield* Registry
  const runs = yield* registry.runs
  const workers = yield* registry.workers()
  const here = hostname()
  const machine = runs.some((run) => run.host === here) ? ProcessInfo.allProcesses() : []
  const statuses = runs.map((run) =>
    runStatus(
      run,
      workers.filter((worker) => worker.runId === run.runId),
      machine,
      here
    )
  )
  const orphans = statuses.flatMap((run) =>
    run.processes
      .filter((p) => p.orphan && p.pid !== null)
      .map((p): Orphan => ({ pid: p.pid!, runId: run.runId, ownerPid: run.ownerPid, workerId: p.workerId }))
  )
  return {
    dataDir: registry.dataDir,
    databasePath: registry.databasePath,
    runs: statuses,
    orphans,
    summary: {
      runs: statuses.length,
      liveRuns: statuses.filter((run) => run.state === "live").length,
      processesAlive: statuses.reduce((n, run) => n + run.processes.filter((p) => p.process === "alive").length, 0),
      orphans: orphans.length
    }
  }
})

/** "2 runs, 1 live; 3 worker processes alive; 0 orphans". */
export const summaryLine = (summary: StatusSummary): string =>
  `${count(summary.runs, "run")}, ${summary.liveRuns} live; ${count(summary.processesAlive, "worker process", "worker processes")} alive; ${count(summary.orphans, "orphan")}`

/** The command that kills the orphans of `report`, repeating the operator's `--data-dir`. */
export const sweepCommand = (explicitDataDir: string | undefined): string =>
  `snakepit sweep${dataDirArgument(explicitDataDir)}`

/** What to do about orphans: the sweep, with the operator's `--data-dir`. */
export const sweepFix = (explicitDataDir: string | undefined): string =>
  `run \`${sweepCommand(explicitDataDir)}\`: it kills each orphan only after the OS shows its dead run's id on its command line`

/** One line per orphan: "pid 123 (worker default-1.1 of run r…, owner pid 45 is dead)". */
export const describeOrphans = (orphans: ReadonlyArray<Orphan>): string =>
  orphans
    .map(
      (o) =>
        `pid ${o.pid} (${o.workerId === null ? "unregistered process" : `worker ${o.workerId}`} of run ${o.runId}, owner pid ${o.ownerPid} is dead)`
    )
    .join(", ")

const yesNo = (value: boolean | null): string => (value === null ? "?" : value ? "yes" : "no")
const orDash = (value: number | null): string => (value === null ? "-" : String(value))

/** The report as text lines, as `snakepit status` prints it. */
export const render = (
  report: StatusReport,
  source: DataDirSource,
  explicitDataDir: string | undefined
): ReadonlyArray<string> => {
  const lines: Array<string> = [`registry: ${report.databasePath} (data dir from ${source})`]
  if (report.runs.length === 0) {
    lines.push("no runs recorded: no Snakepit pool has used this data dir since its last sweep")
  }
  for (const run of report.runs) {
    lines.push(
      "",
      ...table([
        ["RUN", "STATE", "OWNER PID", "OWNER ALIVE", "HOST", "STARTED", "ENDED"],
        [
          run.runId,
          run.state,
          String(run.ownerPid),
          yesNo(run.ownerAlive),
          run.host,
          formatDate(run.startedAt),
          formatDate(run.endedAt)
        ]
      ])
    )
    if (run.processes.length === 0) {
      lines.push("  (no worker recorded)")
      continue
    }
    lines.push(
      ...table(
        [
          ["WORKER", "PID", "PGID", "STATE", "PROCESS", ""],
          ...run.processes.map((p) => [
            p.workerId ?? "-",
            orDash(p.pid),
            orDash(p.pgid),
            p.state,
            p.process,
            p.orphan ? "ORPHAN" : ""
          ])
        ],
        "  "
      )
    )
  }
  lines.push("", summaryLine(report.summary))
  if (report.orphans.length > 0) {
    lines.push(
      `FAIL  ${count(report.orphans.length, "orphaned process", "orphaned processes")} of dead runs: ${describeOrphans(report.orphans)}`,
      `      fix: ${sweepFix(explicitDataDir)}`
    )
  }
  return lines
}

/** The report as JSON-ready data (dates as ISO strings). */
export const toJson = (report: StatusReport, source: DataDirSource, explicitDataDir: string | undefined) => ({
  dataDir: report.dataDir,
  databasePath: report.databasePath,
  dataDirSource: source,
  runs: report.runs.map((run) => ({
    ...run,
    startedAt: run.startedAt.toISOString(),
    endedAt: run.endedAt?.toISOString() ?? null,
    processes: run.processes.map((p) => ({ ...p, startedAt: p.startedAt?.toISOString() ?? null }))
  })),
  orphans: report.orphans,
  summary: report.summary,
  fix: report.orphans.length > 0 ? sweepFix(explicitDataDir) : null
})

/** Options of `snakepit status`. */
export interface StatusOptions {
  /** The registry's directory; default SNAKEPIT_DATA_DIR, else the per-user state directory. */
  readonly dataDir?: string | undefined
  /** Print JSON instead of text. */
  readonly json?: boolean | undefined
}

/**
 * Prints the status of the registry (text or JSON), then fails with {@link DiagnosticFailure}
 * (exit code 1) when it found orphans, or (after printing what to do) when the registry cannot
 * be opened or read. A cheap check for monitoring: it starts nothing and kills nothing.
 */
export const status = (options: StatusOptions = {}): Effect.Effect<StatusReport, DiagnosticFailure> =>
  Effect.gen(function* () {
    const json = options.json === true
    const source = yield* dataDirSource(options.dataDir)
    yield* existingDataDir("status", options.dataDir, source, json)
    const report = yield* inspect.pipe(
      Effect.provide(registryLayer(options.dataDir)),
      Effect.catchTags({
        RegistryUnavailable: reportRegistryFailure("status", json),
        RegistryError: reportRegistryFailure("status", json)
      })
    )
    yield* json
      ? Console.log(JSON.stringify(toJson(report, source, options.dataDir), null, 2))
      : Console.log(render(report, source, options.dataDir).join("\n"))
    if (report.orphans.length > 0) {
      return yield* new DiagnosticFailure({
        command: "status",
        problems: [`orphans: ${describeOrphans(report.orphans)}`]
      })
    }
    return report
  })

/** The `status` subcommand. */
export const command = Command.make(
  "status",
  { dataDir: SharedOptions.dataDir, json: SharedOptions.json },
  ({ dataDir, json }) => Effect.asVoid(status({ dataDir: Option.getOrUndefined(dataDir), json }))
).pipe(
  Command.withDescription(
    "Show the runs and worker processes the registry records, checked against the OS, and flag orphans (live processes of dead runs). Exit code 1 when there are orphans."
  )
)
