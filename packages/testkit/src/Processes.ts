/**
 * Asking the operating system (not the registry) which processes are alive: the only
 * honest way to prove that nothing leaked.
 *
 * @since 0.1.0
 */
import { execFileSync } from "node:child_process"
import { readdirSync, readFileSync } from "node:fs"
import { Duration, Effect, Schedule } from "effect"

/** True while `pid` names a live process (a zombie counts as gone). */
export const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
  if (process.platform !== "linux") return true
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z"
  } catch {
    return false // exited between the two checks
  }
}

/** Every live process whose command line contains `needle`, as `[pid, commandLine]`. */
export const processesMatching = (needle: string): ReadonlyArray<readonly [number, string]> => {
  if (process.platform === "linux") {
    const found: Array<readonly [number, string]> = []
    for (const entry of readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue
      const pid = Number(entry)
      let cmdline: string
      try {
        cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").join(" ").trim()
      } catch {
        continue
      }
      if (pid !== process.pid && cmdline.includes(needle) && isAlive(pid)) found.push([pid, cmdline])
    }
    return found
  }
  const out = execFileSync("ps", ["-eo", "pid=,args="], { encoding: "utf8" })
  return out
    .split("\n")
    .map((line) => line.trim().match(/^(\d+)\s+(.*)$/))
    .filter((m): m is RegExpMatchArray => m !== null && m[2]!.includes(needle) && Number(m[1]) !== process.pid)
    .map((m) => [Number(m[1]), m[2]!] as const)
}

/** Live processes started for run `runId` (workers carry `--snakepit-run-id <runId>`). */
export const processesOfRun = (runId: string) => processesMatching(`--snakepit-run-id ${runId}`)

/**
 * Waits until `condition` holds, polling every 25 ms, and fails with a description of what
 * was still true after `timeout`. For real-process tests: a bounded wait on a real condition.
 */
export const awaitCondition = (
  describe: string,
  condition: () => boolean,
  timeout: Duration.DurationInput = Duration.seconds(10)
): Effect.Effect<void, Error> =>
  Effect.suspend(() => (condition() ? Effect.void : Effect.fail(new Error(describe)))).pipe(
    Effect.retry(Schedule.spaced(Duration.millis(25))),
    Effect.timeoutFail({
      duration: timeout,
      onTimeout: () => new Error(`timed out after ${Duration.format(timeout)}: ${describe}`)
    })
  )

/** Waits until none of `pids` is alive. */
export const awaitGone = (pids: ReadonlyArray<number>, timeout?: Duration.DurationInput) =>
  awaitCondition(`processes still alive: ${pids.filter(isAlive).join(", ")}`, () => !pids.some(isAlive), timeout)

/** Waits until no process of run `runId` is alive. */
export const awaitRunGone = (runId: string, timeout?: Duration.DurationInput) =>
  awaitCondition(
    `processes of run ${runId} still alive: ${JSON.stringify(processesOfRun(runId))}`,
    () => processesOfRun(runId).length === 0,
    timeout
  )
