/**
 * Proving that a process is ours before anything kills it (LESSONS #9). A registry row proves
 * nothing on its own: whoever can write the database can write a row. What the OS says now must
 * match what the registry read from the OS when the worker was spawned.
 *
 * - A **worker** is ours when its pid is alive, started at the start time recorded for it at
 *   spawn, and its command line carries its run id.
 * - Its **process group** is ours only when that worker leads it (the OS says pgid == pid).
 * - A **member of its session** is ours when the worker is ours, or, once the worker is gone,
 *   when the member's session id is the worker's pid and it started no earlier than the worker.
 *   Workers are spawned detached, so each leads its own session, and Linux never reuses a pid
 *   while a live process still has it as its session id. (If the pid now names another process,
 *   our session is over and nothing is claimed.)
 * - A process that merely carries a run id on its command line proves nothing: it is reported
 *   as suspicious, never killed.
 *
 * Sessions are read from /proc: on other systems only the worker and its group are claimed.
 *
 * @since 0.1.0
 */
import * as ProcessInfo from "./ProcessInfo.js"

/**
 * What the registry recorded about a worker's process: the fields the proof needs.
 *
 * @since 0.1.0
 * @category models
 */
export interface RecordedProcess {
  readonly runId: string
  readonly pid: number | null
  /** The worker's start time as {@link ProcessInfo.startTime} read it at spawn; null if unknown. */
  readonly startTime: string | null
}

/**
 * What the OS says about a recorded worker now.
 *
 * @since 0.1.0
 * @category models
 */
export type WorkerProof =
  /** Proven ours; `leadsGroup` when it leads its process group (so the group is ours too). */
  | { readonly _tag: "Ours"; readonly leadsGroup: boolean }
  /** Its pid names no live process. */
  | { readonly _tag: "Gone" }
  /** A reserved row: no process was recorded yet. */
  | { readonly _tag: "Unspawned" }
  /** The pid is alive but cannot be proven ours (reused by another program, or no start time recorded). */
  | { readonly _tag: "NotOurs"; readonly reason: string }

/**
 * Checks a recorded worker against the OS: pid alive, same start time, run id on its command line.
 *
 * @since 0.1.0
 * @category proofs
 */
export const proveWorker = (worker: RecordedProcess): WorkerProof => {
  const { pid, runId, startTime } = worker
  if (pid === null) return { _tag: "Unspawned" }
  if (pid === process.pid) return { _tag: "NotOurs", reason: "it is this process" }
  if (!ProcessInfo.isAlive(pid)) return { _tag: "Gone" }
  if (startTime === null || startTime === "") {
    return { _tag: "NotOurs", reason: "no start time was recorded for it, so it cannot be proven ours" }
  }
  const now = ProcessInfo.startTime(pid)
  if (now === undefined) return { _tag: "Gone" }
  if (now !== startTime) {
    return {
      _tag: "NotOurs",
      reason: `it started at ${now}, not at the recorded ${startTime} (pid reused by another program)`
    }
  }
  const cmdline = ProcessInfo.commandLine(pid)
  if (cmdline === undefined) return { _tag: "Gone" }
  if (!ProcessInfo.carriesRunId(cmdline, runId)) {
    return { _tag: "NotOurs", reason: `its command line does not carry --snakepit-run-id ${runId}` }
  }
  return { _tag: "Ours", leadsGroup: ProcessInfo.processGroup(pid) === pid }
}

/**
 * The live processes proven to belong to `worker`'s session, other than the worker itself
 * (see the module comment). `proof` is {@link proveWorker}'s verdict on the worker, `table`
 * a {@link ProcessInfo.processTable} read.
 *
 * @since 0.1.0
 * @category proofs
 */
export const sessionMembers = (
  worker: RecordedProcess,
  proof: WorkerProof,
  table: ReadonlyArray<ProcessInfo.ProcessEntry>
): ReadonlyArray<ProcessInfo.ProcessEntry> => {
  const { pid, startTime } = worker
  if (pid === null || startTime === null || startTime === "") return []
  // Alive but not proven: the pid is another program now (or the row lies), and either way our
  // session (if there was one) has ended, since its id would have kept the pid from reuse.
  if (proof._tag === "NotOurs" || proof._tag === "Unspawned") return []
  return table.filter(
    (entry) =>
      entry.sessionId === pid && entry.pid !== pid && ProcessInfo.startedNoEarlierThan(entry.startTime, startTime)
  )
}

/**
 * True while `entry` is still the process the table showed, in `sessionId`: checked again just
 * before a kill, so a pid reused in between is never hit.
 *
 * @since 0.1.0
 * @category proofs
 */
export const stillInSession = (entry: ProcessInfo.ProcessEntry, sessionId: number): boolean =>
  ProcessInfo.isAlive(entry.pid) &&
  ProcessInfo.sessionId(entry.pid) === sessionId &&
  ProcessInfo.startTime(entry.pid) === entry.startTime

/**
 * Live processes that carry one of `runIds` on their command line but are not in `proven`:
 * reported (for `snakepit status` and the sweep's log), never killed on that alone.
 *
 * @since 0.1.0
 * @category proofs
 */
export const suspicious = (
  runIds: ReadonlyArray<string>,
  proven: ReadonlySet<number>
): ReadonlyArray<{ readonly pid: number; readonly runId: string }> => {
  if (runIds.length === 0) return []
  const found: Array<{ readonly pid: number; readonly runId: string }> = []
  for (const [pid, cmdline] of ProcessInfo.allProcesses()) {
    if (proven.has(pid)) continue
    const runId = runIds.find((id) => ProcessInfo.carriesRunId(cmdline, id))
    if (runId !== undefined && ProcessInfo.isAlive(pid)) found.push({ pid, runId })
  }
  return found
}
