/**
 * What the operating system says about a process: alive or not, when it started, its
 * command line and its process group. The registry trusts these, never its own rows, before
 * it kills anything (LESSONS #9: never kill what you cannot prove is yours).
 *
 * Linux reads `/proc`; other systems ask `ps`. Every function is synchronous and cheap, and
 * answers `undefined` when the process is gone or cannot be read.
 *
 * @since 0.1.0
 */
import { execFileSync } from "node:child_process"
import { readdirSync, readFileSync } from "node:fs"

const isLinux = process.platform === "linux"

const readText = (path: string): string | undefined => {
  try {
    return readFileSync(path, "utf8")
  } catch {
    return undefined
  }
}

/** Runs `ps` with the C locale; `undefined` when it fails (typically: no such process). */
const ps = (args: ReadonlyArray<string>): string | undefined => {
  try {
    return execFileSync("ps", args, {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
      env: { ...process.env, LC_ALL: "C" }
    }).trim()
  } catch {
    return undefined
  }
}

/** The fields of /proc/<pid>/stat after the command name: index 0 is field 3 (state). */
const statFields = (pid: number): ReadonlyArray<string> | undefined => {
  const stat = readText(`/proc/${pid}/stat`)
  if (stat === undefined) return undefined
  return stat
    .slice(stat.lastIndexOf(")") + 2)
    .trim()
    .split(" ")
}

let bootIdCache: string | undefined

/** Identifies this boot of the machine, so a start time in clock ticks cannot repeat across boots. */
const bootId = (): string => {
  if (bootIdCache === undefined) {
    const id = readText("/proc/sys/kernel/random/boot_id")?.trim()
    const btime = readText("/proc/stat")?.match(/^btime\s+(\d+)/m)?.[1]
    bootIdCache = id ?? (btime !== undefined ? `btime${btime}` : "unknown-boot")
  }
  return bootIdCache
}

/** True while `pid` names a live process (a zombie counts as gone; EPERM counts as alive). */
export const isAlive = (pid: number): boolean => {
  if (!Number.isInteger(pid) || pid <= 0) return false
  try {
    process.kill(pid, 0)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EPERM") return false
  }
  if (!isLinux) return true
  const fields = statFields(pid)
  return fields !== undefined && fields[0] !== "Z" && fields[0] !== "X"
}

/**
 * A stable string for when `pid` started: on Linux `linux:<boot id>:<starttime ticks>`
 * (field 22 of /proc/<pid>/stat), elsewhere `ps:<lstart>`. Two processes that ever had the
 * same pid have different start times. `undefined` when the process is gone.
 */
export const startTime = (pid: number): string | undefined => {
  if (!Number.isInteger(pid) || pid <= 0) return undefined
  if (isLinux) {
    const ticks = statFields(pid)?.[19]
    return ticks === undefined ? undefined : `linux:${bootId()}:${ticks}`
  }
  const lstart = ps(["-o", "lstart=", "-p", String(pid)])
  return lstart === undefined || lstart === "" ? undefined : `ps:${lstart.replace(/\s+/g, " ")}`
}

/**
 * True when the process that registered as `pid` with `recordedStartTime` is still running:
 * the pid is alive and started at the same moment (so it is not a newer process that reused
 * the pid). An empty recorded start time (unknown on that system) trusts the pid alone.
 */
export const isOwnerAlive = (pid: number, recordedStartTime: string): boolean => {
  if (!isAlive(pid)) return false
  if (recordedStartTime === "") return true
  const now = startTime(pid)
  return now === undefined ? false : now === recordedStartTime
}

/** The command line of `pid` (arguments joined by single spaces), `undefined` when gone. */
export const commandLine = (pid: number): string | undefined => {
  if (!Number.isInteger(pid) || pid <= 0) return undefined
  if (isLinux) {
    const raw = readText(`/proc/${pid}/cmdline`)
    if (raw === undefined || raw === "") return undefined // gone, or a zombie / kernel thread
    return raw.split("\0").join(" ").trim()
  }
  const args = ps(["-o", "args=", "-p", String(pid)])
  return args === undefined || args === "" ? undefined : args
}

/**
 * The session of `pid` (field 6 of /proc/<pid>/stat), `undefined` when gone and on systems other
 * than Linux (where the sweep never kills by session).
 */
export const sessionId = (pid: number): number | undefined => {
  if (!isLinux || !Number.isInteger(pid) || pid <= 0) return undefined
  const session = statFields(pid)?.[3]
  return session === undefined ? undefined : Number(session)
}

const parseLinuxStart = (value: string): { readonly boot: string; readonly ticks: bigint } | undefined => {
  const match = /^linux:(.+):(\d+)$/.exec(value)
  return match === null ? undefined : { boot: match[1]!, ticks: BigInt(match[2]!) }
}

/**
 * True when start time `later` is not earlier than `earlier` (both as {@link startTime} wrote
 * them, in the same boot). False when they cannot be compared (another boot, another system).
 */
export const startedNoEarlierThan = (later: string, earlier: string): boolean => {
  const a = parseLinuxStart(later)
  const b = parseLinuxStart(earlier)
  return a !== undefined && b !== undefined && a.boot === b.boot && a.ticks >= b.ticks
}

/** A live process as /proc shows it: what the sweep needs to prove it ours. */
export interface ProcessEntry {
  readonly pid: number
  readonly processGroup: number
  readonly sessionId: number
  readonly startTime: string
}

/**
 * Every live (non-zombie) process other than this one, with its group, session and start time,
 * on Linux; empty elsewhere.
 */
export const processTable = (): ReadonlyArray<ProcessEntry> => {
  if (!isLinux) return []
  let entries: ReadonlyArray<string>
  try {
    entries = readdirSync("/proc")
  } catch {
    return []
  }
  const table: Array<ProcessEntry> = []
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue
    const pid = Number(entry)
    if (pid === process.pid) continue
    const fields = statFields(pid)
    if (fields === undefined || fields[0] === "Z" || fields[0] === "X" || fields[19] === undefined) continue
    table.push({
      pid,
      processGroup: Number(fields[2]),
      sessionId: Number(fields[3]),
      startTime: `linux:${bootId()}:${fields[19]}`
    })
  }
  return table
}

/** The process group of `pid`, `undefined` when gone. */
export const processGroup = (pid: number): number | undefined => {
  if (!Number.isInteger(pid) || pid <= 0) return undefined
  if (isLinux) {
    const pgrp = statFields(pid)?.[2]
    return pgrp === undefined ? undefined : Number(pgrp)
  }
  const pgid = ps(["-o", "pgid=", "-p", String(pid)])
  return pgid === undefined || pgid === "" ? undefined : Number(pgid)
}

/**
 * The process groups that have at least one live (non-zombie) member, on Linux;
 * `undefined` elsewhere (where the caller has to trust `kill -0`).
 */
export const liveProcessGroups = (): ReadonlySet<number> | undefined => {
  if (!isLinux) return undefined
  const groups = new Set<number>()
  let entries: ReadonlyArray<string>
  try {
    entries = readdirSync("/proc")
  } catch {
    return undefined
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue
    const fields = statFields(Number(entry))
    if (fields !== undefined && fields[0] !== "Z" && fields[0] !== "X") groups.add(Number(fields[2]))
  }
  return groups
}

const escapeRegExp = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

/**
 * True when `commandLine` carries `--snakepit-run-id <runId>` (or `--snakepit-run-id=<runId>`)
 * as whole arguments. An empty or blank run id never matches.
 */
export const carriesRunId = (commandLine: string, runId: string): boolean => {
  if (runId.trim() === "" || /\s/.test(runId)) return false
  return new RegExp(`(^|\\s)--snakepit-run-id(\\s+|=)${escapeRegExp(runId)}(\\s|$)`).test(commandLine)
}

/** Every live process other than this one, as `[pid, commandLine]`. */
export const allProcesses = (): ReadonlyArray<readonly [number, string]> => {
  const found: Array<readonly [number, string]> = []
  if (isLinux) {
    let entries: ReadonlyArray<string>
    try {
      entries = readdirSync("/proc")
    } catch {
      return found
    }
    for (const entry of entries) {
      if (!/^\d+$/.test(entry)) continue
      const pid = Number(entry)
      if (pid === process.pid) continue
      const cmdline = commandLine(pid)
      if (cmdline !== undefined) found.push([pid, cmdline])
    }
    return found
  }
  const out = ps(["-axo", "pid=,args="]) ?? ""
  for (const line of out.split("\n")) {
    const match = line.trim().match(/^(\d+)\s+(.*)$/)
    if (match === null) continue
    const pid = Number(match[1])
    if (pid !== process.pid) found.push([pid, match[2]!])
  }
  return found
}

/** Live processes whose command line carries `--snakepit-run-id <runId>`. */
export const processesOfRun = (runId: string): ReadonlyArray<number> =>
  allProcesses()
    .filter(([pid, cmdline]) => carriesRunId(cmdline, runId) && isAlive(pid))
    .map(([pid]) => pid)

/** A process as a snapshot names it: pid and start time, so a later kill can prove it is the same one. */
export interface ProcessRef {
  readonly pid: number
  readonly startTime: string
}

/**
 * Every live descendant of `pid` (children, their children, ...), each with its start time.
 * Linux reads /proc; elsewhere `ps`. Empty when `pid` is gone.
 */
export const descendants = (pid: number): ReadonlyArray<ProcessRef> => {
  const children = new Map<number, Array<number>>()
  const link = (child: number, parent: number) => {
    const list = children.get(parent)
    if (list === undefined) children.set(parent, [child])
    else list.push(child)
  }
  if (isLinux) {
    let entries: ReadonlyArray<string>
    try {
      entries = readdirSync("/proc")
    } catch {
      return []
    }
    for (const entry of entries) {
      if (!/^\d+$/.test(entry)) continue
      const ppid = statFields(Number(entry))?.[1]
      if (ppid !== undefined) link(Number(entry), Number(ppid))
    }
  } else {
    for (const line of (ps(["-axo", "pid=,ppid="]) ?? "").split("\n")) {
      const match = line.trim().match(/^(\d+)\s+(\d+)$/)
      if (match !== null) link(Number(match[1]), Number(match[2]))
    }
  }
  const found: Array<ProcessRef> = []
  const frontier = [pid]
  while (frontier.length > 0) {
    for (const child of children.get(frontier.pop()!) ?? []) {
      const started = startTime(child)
      if (started !== undefined && isAlive(child)) found.push({ pid: child, startTime: started })
      frontier.push(child)
    }
  }
  return found
}

/** SIGKILLs `ref` if it is still the process the snapshot saw (same pid and start time). */
export const killIfSame = (ref: ProcessRef): boolean => {
  if (startTime(ref.pid) !== ref.startTime) return false
  try {
    process.kill(ref.pid, "SIGKILL")
    return true
  } catch {
    return false
  }
}
