/**
 * Asking the operating system (not the registry) which processes are alive: the only
 * honest way to prove that nothing leaked.
 *
 * @since 0.1.0
 */
import { type ChildProcess, spawn } from "node:child_process"
import { createInterface } from "node:readline"
import { ProcessInfo } from "@snakepit/registry"
import { Duration, Effect, Schedule, type Scope } from "effect"

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

/**
 * How a process ended: its exit code, or the signal that ended it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Ended {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

/**
 * A Node process started for a test (an application, a host of pools), talking JSON lines.
 *
 * @since 0.1.0
 * @category models
 */
export interface HostProcess {
  readonly child: ChildProcess
  readonly pid: number
  /**
   * Its next stdout line that is a JSON object, parsed (other lines, such as log lines, are
   * skipped); fails when it exits first, or after `timeout` (default 30 s).
   */
  readonly nextJson: <A = unknown>(timeout?: Duration.DurationInput) => Effect.Effect<A, Error>
  /** Waits (at most `timeout`, default 30 s) until it has exited, and says how. */
  readonly exited: (timeout?: Duration.DurationInput) => Effect.Effect<Ended, Error>
}

/**
 * Starts `node <script> <args>` (stdout piped, stderr inherited) and SIGKILLs it when the scope
 * closes if it still runs, whatever the test did.
 *
 * @since 0.1.0
 * @category processes
 */
export const spawnHost = (
  script: string,
  args: ReadonlyArray<string> = []
): Effect.Effect<HostProcess, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const child = spawn(process.execPath, [script, ...args], { stdio: ["ignore", "pipe", "inherit"] })
      child.on("error", () => {})
      let ended: Ended | undefined
      const waiters: Array<(ended: Ended) => void> = []
      child.once("exit", (code, signal) => {
        ended = { code, signal }
        for (const waiter of waiters.splice(0)) waiter(ended)
      })
      const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
      const nextJson = <A>(timeout: Duration.DurationInput = Duration.seconds(30)) =>
        Effect.tryPromise({
          try: async () => {
            for (;;) {
              const line = await lines.next()
              if (line.done) throw new Error(`${script} exited without printing`)
              const text = String(line.value)
              if (text.startsWith("{")) return JSON.parse(text) as A
            }
          },
          catch: (error) => (error instanceof Error ? error : new Error(String(error)))
        }).pipe(
          Effect.timeoutFail({
            duration: timeout,
            onTimeout: () => new Error(`${script} printed nothing within ${Duration.format(timeout)}`)
          })
        )
      const exited = (timeout: Duration.DurationInput = Duration.seconds(30)) =>
        Effect.async<Ended>((resume) => {
          if (ended !== undefined) return resume(Effect.succeed(ended))
          waiters.push((value) => resume(Effect.succeed(value)))
        }).pipe(
          Effect.timeoutFail({
            duration: timeout,
            onTimeout: () => new Error(`${script} did not exit within ${Duration.format(timeout)}`)
          })
        )
      return { child, pid: child.pid ?? 0, nextJson, exited } satisfies HostProcess
    }),
    ({ child }) =>
      Effect.sync(() => {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
      })
  )
