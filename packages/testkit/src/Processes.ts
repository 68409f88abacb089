/**
 * Asking the operating system (not the registry) which processes are alive: the only
 * honest way to prove that nothing leaked.
 *
 * @since 0.1.0
 */
import { spawn } from "node:child_process"
import { ProcessInfo } from "@snakepit/registry"
import { Duration, Effect, Schedule } from "effect"

/** True while `pid` names a live process (a zombie counts as gone). */
export const isAlive = ProcessInfo.isAlive

/** Every live process whose command line contains `needle`, as `[pid, commandLine]`. */
export const processesMatching = (needle: string): ReadonlyArray<readonly [number, string]> =>
  ProcessInfo.allProcesses().filter(([pid, cmdline]) => cmdline.includes(needle) && isAlive(pid))

/** Live processes started for run `runId` (workers carry `--snakepit-run-id <runId>`), as `[pid, commandLine]`. */
export const processesOfRun = (runId: string): ReadonlyArray<readonly [number, string]> =>
  ProcessInfo.allProcesses().filter(([pid, cmdline]) => ProcessInfo.carriesRunId(cmdline, runId) && isAlive(pid))

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

/**
 * What a process printed, once it exited with code 0.
 *
 * @since 0.1.0
 * @category models
 */
export interface Completed {
  readonly pid: number
  readonly stdout: string
}

/**
 * Runs `command args` to completion and returns its stdout; fails (with its stderr) on a non-zero
 * exit, or after `timeout`. Interrupting the wait SIGKILLs the process.
 *
 * @since 0.1.0
 * @category processes
 */
export const runToCompletion = (
  command: string,
  args: ReadonlyArray<string>,
  timeout: Duration.DurationInput = Duration.seconds(60)
): Effect.Effect<Completed, Error> =>
  Effect.async<Completed, Error>((resume) => {
    const child = spawn(command, [...args], { stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk) => {
      stdout += chunk
    })
    child.stderr.on("data", (chunk) => {
      stderr += chunk
    })
    child.on("error", (error) => resume(Effect.fail(error)))
    child.on("close", (code, signal) =>
      resume(
        code === 0
          ? Effect.succeed({ pid: child.pid ?? 0, stdout })
          : Effect.fail(new Error(`${command} ${args.join(" ")} exited with ${code ?? signal}: ${stderr}`))
      )
    )
    return Effect.sync(() => {
      child.kill("SIGKILL")
    })
  }).pipe(
    Effect.timeoutFail({
      duration: timeout,
      onTimeout: () => new Error(`${command} ${args.join(" ")} did not exit within ${Duration.format(timeout)}`)
    })
  )
