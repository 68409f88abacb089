/**
 * `snakepit status`: what the process registry records, checked against the operating system.
 * Each run (alive while its host holds the run's OS lock), each worker (its process proven the
 * recorded one, gone, or a pid now used by another program), the processes in the workers'
 * sessions, and the orphans: proven processes of dead runs. A process that only carries a run id
 * on its command line is shown as `suspicious`, never as an orphan: a run id can be copied.
 *
 * @since 0.1.0
 */
import { hostname } from "node:os"
import { Command } from "@effect/cli"
import type { PoolReport } from "@snakepit/core"
import {
  Ownership,
  ProcessInfo,
  Registry,
  type RegistryError,
  type RunLiveness,
  type RunRecord,
  type WorkerRecord,
  type WorkerState
} from "@snakepit/registry"
import { Console, Effect, Option } from "effect"
import { DiagnosticFailure } from "./errors.js"
import { type DataDirSource, dataDirArgument, dataDirSource, registryLayer } from "./internal/dataDir.js"
import { count, formatDate, table } from "./internal/format.js"
import { withHost } from "./internal/hosts.js"
import * as SharedOptions from "./internal/options.js"
import { poolJson, renderPool } from "./internal/pools.js"
import { existingDataDir, reportRegistryFailure } from "./internal/registryFailure.js"

/**
 * What the OS says about a process: `alive` (proven ours: the recorded worker, by pid, start time
 * and run id, or a process in its session), `gone`, `reused` (the recorded pid is alive but cannot
 * be proven the recorded process: another program, never killed), `unspawned` (a reserved row
 * without a pid yet), `unknown` (recorded by another host), `suspicious` (carries the run id on its
 * command line but is neither a recorded worker nor in one's session: never killed).
 */
export type ProcessState = "alive" | "gone" | "reused" | "unspawned" | "unknown" | "suspicious"

/**
 * A run's state: `live` (its host alive, not ended), `ended` (its pools closed), `dead` (its host
 * gone, its lock free, without ending the run: killed or crashed), `other-host` (recorded by
 * another machine).
 */
export type RunState = "live" | "ended" | "dead" | "other-host"

/** One process of a run: a registered worker, a process in a worker's session, or a suspicious one. */
export interface ProcessStatus {
  /** The worker id, or null for an unregistered process (a tool's child, or a suspicious process). */
  readonly workerId: string | null
  readonly pid: number | null
  readonly pgid: number | null
  /** The row's state, or "unregistered". */
  readonly state: WorkerState | "unregistered"
  readonly startedAt: Date | null
  readonly process: ProcessState
  /** Proven ours and alive while its run is dead: `snakepit sweep` kills it. */
  readonly orphan: boolean
}

/**
 * What a run's control socket answered: `ok` with its pools, or why it could not (`stale`: the
 * host died without removing it; `missing`, `denied`, `timeout`, `error`: see `Control.ControlUnavailable`).
 */
export interface ControlStatus {
  readonly socket: string
  readonly state: "ok" | "stale" | "missing" | "denied" | "timeout" | "error"
  /** Why it could not answer; null when ok. */
  readonly detail: string | null
  readonly pools: ReadonlyArray<PoolReport>
}

/** One run of the registry, with its processes. */
export interface RunStatus {
  readonly runId: string
  readonly ownerPid: number
  /** Whether the recorded owner runs (pid and start time); null when recorded by another host (its pids mean nothing here). */
  readonly ownerAlive: boolean | null
  /** The run's OS lock: `held` while its host lives; null when recorded by another host. */
  readonly lock: RunLiveness["lock"] | null
  readonly host: string
  readonly state: RunState
  readonly startedAt: Date
  readonly endedAt: Date | null
  readonly processes: ReadonlyArray<ProcessStatus>
  /** The control socket the run recorded, if any. */
  readonly controlSocket: string | null
  /** What that socket answered, once asked ({@link withControl}); null when not asked or none. */
  readonly control: ControlStatus | null
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
  /** Control sockets that did not answer: a live host's (a problem), or a dead host's stale one (sweep removes it). */
  readonly unreachable?: ReadonlyArray<ControlStatus & { readonly runId: string; readonly alive: boolean }>
  readonly dataDir: string
  readonly databasePath: string
  readonly runs: ReadonlyArray<RunStatus>
  readonly orphans: ReadonlyArray<Orphan>
  readonly summary: StatusSummary
}

const processState = (proof: Ownership.WorkerProof, local: boolean): ProcessState => {
  if (!local) return "unknown"
  switch (proof._tag) {
    case "Ours":
      return "alive"
    case "Gone":
      return "gone"
    case "Unspawned":
      return "unspawned"
    case "NotOurs":
      return "reused"
  }
}

const runStatus = (
  run: RunRecord,
  liveness: RunLiveness | null,
  rows: ReadonlyArray<WorkerRecord>,
  table: ReadonlyArray<ProcessInfo.ProcessEntry>
): RunStatus => {
  const local = liveness !== null
  const orphaned = liveness !== null && !liveness.alive
  const proven = new Set<number>()
  const registered: Array<ProcessStatus> = []
  const sessions: Array<ProcessStatus> = []
  for (const row of rows) {
    const proof = Ownership.proveWorker(row)
    const process = processState(proof, local)
    registered.push({
      workerId: row.workerId,
      pid: row.pid,
      pgid: row.pgid,
      state: row.state,
      startedAt: row.startedAt,
      process,
      orphan: orphaned && process === "alive"
    })
    if (!local) continue
    if (process === "alive" && row.pid !== null) proven.add(row.pid)
    // The same proof the sweep kills by: the worker's session (its tools' children).
    for (const member of Ownership.sessionMembers(row, proof, table)) {
      if (proven.has(member.pid)) continue
      proven.add(member.pid)
      sessions.push({
        workerId: null,
        pid: member.pid,
        pgid: member.processGroup,
        state: "unregistered",
        startedAt: null,
        process: "alive",
        orphan: orphaned
      })
    }
  }
  const known = new Set(rows.flatMap((row) => (row.pid === null ? [] : [row.pid])))
  const suspicious = local
    ? Ownership.suspicious([run.runId], new Set([...proven, ...known])).map(
        ({ pid }): ProcessStatus => ({
          workerId: null,
          pid,
          pgid: ProcessInfo.processGroup(pid) ?? null,
          state: "unregistered",
          startedAt: null,
          process: "suspicious",
          orphan: false
        })
      )
    : []
  return {
    runId: run.runId,
    ownerPid: run.ownerPid,
    ownerAlive: liveness?.ownerAlive ?? null,
    lock: liveness?.lock ?? null,
    host: run.host,
    state: !local ? "other-host" : run.endedAt !== null ? "ended" : orphaned ? "dead" : "live",
    startedAt: run.startedAt,
    endedAt: run.endedAt,
    processes: [...registered, ...sessions, ...suspicious],
    controlSocket: local ? run.controlSocket : null,
    control: null
  }
}

/**
 * Reads every run and worker of the registry and checks each against the OS (never trusting the
 * rows alone). Orphans are proven the way the sweep proves them, so `status` and `sweep` agree.
 */
export const inspect: Effect.Effect<StatusReport, RegistryError, Registry> = Effect.gen(function* () {
  const registry = yield* Registry
  const runs = yield* registry.runs
  const workers = yield* registry.workers()
  const here = hostname()
  const table = runs.some((run) => run.host === here) ? ProcessInfo.processTable() : []
  const statuses: Array<RunStatus> = []
  for (const run of runs) {
    const liveness = run.host === here ? yield* registry.liveness(run) : null
    statuses.push(
      runStatus(
        run,
        liveness,
        workers.filter((worker) => worker.runId === run.runId),
        table
      )
    )
  }
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

/**
 * Asks every run that recorded a control socket for its pools, through the socket (bounded in
 * time: a dead host's stale socket is reported, never waited on).
 */
export const withControl = (report: StatusReport): Effect.Effect<StatusReport> =>
  Effect.gen(function* () {
    const runs = yield* Effect.forEach(
      report.runs,
      (run) =>
        run.controlSocket === null
          ? Effect.succeed(run)
          : withHost(run.controlSocket, (client) => client.Pools()).pipe(
              Effect.map((pools): ControlStatus => ({ socket: run.controlSocket!, state: "ok", detail: null, pools })),
              Effect.catchTags({
                ControlUnavailable: (e) =>
                  Effect.succeed<ControlStatus>({
                    socket: e.socket,
                    state: e.reason,
                    detail: e.explanation,
                    pools: []
                  }),
                HostFailed: (e) =>
                  Effect.succeed<ControlStatus>({ socket: e.socket, state: "error", detail: e.detail, pools: [] })
              }),
              Effect.map((control): RunStatus => ({ ...run, control }))
            ),
      { concurrency: 4 }
    )
    const unreachable = runs.flatMap((run) =>
      run.control !== null && run.control.state !== "ok"
        ? [{ ...run.control, runId: run.runId, alive: run.state === "live" }]
        : []
    )
    return { ...report, runs, unreachable }
  })

/** "2 runs, 1 live; 3 worker processes alive; 0 orphans". */
export const summaryLine = (summary: StatusSummary): string =>
  `${count(summary.runs, "run")}, ${summary.liveRuns} live; ${count(summary.processesAlive, "worker process", "worker processes")} alive; ${count(summary.orphans, "orphan")}`

/** The command that kills the orphans of `report`, repeating the operator's `--data-dir`. */
export const sweepCommand = (explicitDataDir: string | undefined): string =>
  `snakepit sweep${dataDirArgument(explicitDataDir)}`

/** What to do about orphans: the sweep, with the operator's `--data-dir`. */
export const sweepFix = (explicitDataDir: string | undefined): string =>
  `run \`${sweepCommand(explicitDataDir)}\`: it kills each orphan only once the OS proves it the recorded worker (pid, start time, run id) or a process in that worker's session`

/** One line per orphan: "pid 123 (worker default-1.1 of run r…, owner pid 45 is dead)". */
export const describeOrphans = (orphans: ReadonlyArray<Orphan>): string =>
  orphans
    .map(
      (o) =>
        `pid ${o.pid} (${o.workerId === null ? "process in a worker's session" : `worker ${o.workerId}`} of run ${o.runId}, owner pid ${o.ownerPid} is dead)`
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
        ["RUN", "STATE", "OWNER PID", "OWNER ALIVE", "LOCK", "HOST", "STARTED", "ENDED"],
        [
          run.runId,
          run.state,
          String(run.ownerPid),
          yesNo(run.ownerAlive),
          run.lock ?? "?",
          run.host,
          formatDate(run.startedAt),
          formatDate(run.endedAt)
        ]
      ])
    )
    if (run.control !== null) {
      const control = run.control
      lines.push(
        control.state === "ok"
          ? `  control: ${control.socket}`
          : `  control: ${control.socket}: ${control.state.toUpperCase()}: ${control.detail}`
      )
      for (const pool of control.pools) lines.push(...renderPool(pool, "  "))
    }
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
  for (const control of report.unreachable ?? []) {
    lines.push(
      control.alive
        ? `FAIL  run ${control.runId} is alive but its control socket ${control.socket} does not answer: ${control.detail}`
        : `FAIL  run ${control.runId} is dead and left its control socket ${control.socket}: ${control.detail}`,
      `      fix: ${
        control.alive
          ? "check the host process (is it stuck or overloaded?); its pools may still serve"
          : `run \`${sweepCommand(explicitDataDir)}\`: it removes the dead run's rows and its stale socket (and kills its orphans, if any)`
      }`
    )
  }
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
    control: run.control === null ? null : { ...run.control, pools: run.control.pools.map((pool) => poolJson(pool)) },
    processes: run.processes.map((p) => ({ ...p, startedAt: p.startedAt?.toISOString() ?? null }))
  })),
  orphans: report.orphans,
  unreachable: report.unreachable ?? [],
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
      }),
      Effect.flatMap(withControl)
    )
    yield* json
      ? Console.log(JSON.stringify(toJson(report, source, options.dataDir), null, 2))
      : Console.log(render(report, source, options.dataDir).join("\n"))
    const problems = [
      ...(report.orphans.length > 0 ? [`orphans: ${describeOrphans(report.orphans)}`] : []),
      ...(report.unreachable ?? []).map((c) => `run ${c.runId}: control socket ${c.state}`)
    ]
    if (problems.length > 0) return yield* new DiagnosticFailure({ command: "status", problems })
    return report
  })

/** The `status` subcommand. */
export const command = Command.make(
  "status",
  { dataDir: SharedOptions.dataDir, json: SharedOptions.json },
  ({ dataDir, json }) => Effect.asVoid(status({ dataDir: Option.getOrUndefined(dataDir), json }))
).pipe(
  Command.withDescription(
    "Show the runs and worker processes the registry records, checked against the OS, each live host's pools and workers through its control socket, and flag orphans (live processes of dead runs) and control sockets that do not answer. Exit code 1 when there is any."
  )
)
