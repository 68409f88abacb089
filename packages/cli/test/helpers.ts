/**
 * In-process runs of the `snakepit` command line with captured output, temporary data dirs,
 * and real processes that are always killed by a finalizer, whatever the test's outcome.
 */
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { NodeContext } from "@effect/platform-node"
import { ProcessInfo } from "@snakepit/registry"
import { Processes } from "@snakepit/testkit"
import { type Console, Duration, Effect, Option, Schedule, Schema } from "effect"
import { Cli } from "../src/index.js"

/** What one command line printed, and its exit code. */
export interface CliResult {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

const format = (args: ReadonlyArray<unknown>) => args.map(String).join(" ")

/** Runs `snakepit <args>` in-process with Node's platform services, capturing what it prints. */
export const runCli = (...args: ReadonlyArray<string>): Effect.Effect<CliResult> =>
  Effect.gen(function* () {
    const stdout: Array<string> = []
    const stderr: Array<string> = []
    const current = yield* Effect.console
    const captured: Console.Console = {
      ...current,
      log: (...line) => Effect.sync(() => stdout.push(format(line))),
      info: (...line) => Effect.sync(() => stdout.push(format(line))),
      error: (...line) => Effect.sync(() => stderr.push(format(line))),
      warn: (...line) => Effect.sync(() => stderr.push(format(line)))
    }
    const code = yield* Cli.run(["node", "snakepit", ...args]).pipe(
      Effect.withConsole(captured),
      Effect.provide(NodeContext.layer)
    )
    return { code, stdout: stdout.join("\n"), stderr: stderr.join("\n") }
  })

/** A fresh temporary directory, removed when the scope closes. */
export const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "snakepit-cli-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

const killGroupAndPid = (pid: number) => {
  for (const target of [-pid, pid]) {
    try {
      process.kill(target, "SIGKILL")
    } catch {
      // already gone
    }
  }
}

/**
 * A long-running process (its own group) whose command line carries `--snakepit-run-id <runId>`,
 * like a worker; SIGKILLed with its group when the scope closes.
 */
export const spawnCarrying = (runId: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 120000)", "--", "--snakepit-run-id", runId], {
        detached: true,
        stdio: "ignore"
      })
      child.on("error", () => {})
      return child.pid!
    }),
    (pid) => Effect.sync(() => killGroupAndPid(pid))
  ).pipe(
    Effect.tap((pid) =>
      Processes.awaitCondition(`process ${pid} did not start with run id ${runId}`, () =>
        ProcessInfo.carriesRunId(ProcessInfo.commandLine(pid) ?? "", runId)
      )
    )
  )

const DeadHostOutput = Schema.parseJson(Schema.Struct({ ownerPid: Schema.Number }))
const deadHost = fileURLToPath(new URL("./fixtures/dead-host.mjs", import.meta.url))

/**
 * Records run `runId` with worker `workerPid` from another Node process that then exits
 * without ending the run: a dead owner, as after `kill -9`. Returns the owner's pid, once gone.
 */
export const recordDeadRun = (dataDir: string, runId: string, workerPid: number) =>
  Effect.async<string, Error>((resume) => {
    const child = spawn(process.execPath, [deadHost, dataDir, runId, String(workerPid)], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    let err = ""
    child.stdout.on("data", (chunk) => {
      out += chunk
    })
    child.stderr.on("data", (chunk) => {
      err += chunk
    })
    child.on("error", (error) => resume(Effect.fail(error)))
    child.on("close", (code) =>
      resume(code === 0 ? Effect.succeed(out) : Effect.fail(new Error(`dead-host exited with ${code}: ${err}`)))
    )
    return Effect.sync(() => {
      child.kill("SIGKILL")
    })
  }).pipe(
    Effect.timeoutFail({ duration: Duration.seconds(30), onTimeout: () => new Error("dead-host did not exit") }),
    Effect.flatMap((out) => Schema.decodeUnknown(DeadHostOutput)(out.trim())),
    Effect.tap(({ ownerPid }) => Processes.awaitGone([ownerPid])),
    Effect.map(({ ownerPid }) => ownerPid)
  )

/** The doctor's JSON output. */
export const Checks = Schema.parseJson(
  Schema.Array(
    Schema.Struct({
      check: Schema.String,
      status: Schema.Literal("ok", "warn", "fail", "skip"),
      detail: Schema.String,
      fix: Schema.NullOr(Schema.String)
    })
  )
)

/** The check named `name` of the doctor's JSON output. */
export const checkNamed = (checks: typeof Checks.Type, name: string) => {
  const found = checks.find((check) => check.check === name)
  if (found === undefined) throw new Error(`no check ${name} in ${JSON.stringify(checks)}`)
  return found
}

// ---------------------------------------------------------------------------------------------
// A live host in a child process, and the CLI as a child process
// ---------------------------------------------------------------------------------------------

/** Lines a child process writes, as they come. */
class Lines {
  readonly all: Array<string> = []
  private partial = ""
  push(chunk: string) {
    const parts = (this.partial + chunk).split("\n")
    this.partial = parts.pop()!
    this.all.push(...parts.filter((line) => line.trim() !== ""))
  }
}

/** Waits (bounded) until `find` picks a line of `lines`. */
const awaitLine = <A>(
  describe: string,
  lines: Lines,
  find: (line: string) => A | undefined,
  timeout: Duration.DurationInput
): Effect.Effect<A, Error> =>
  Effect.suspend(() => {
    for (const line of lines.all) {
      const found = find(line)
      if (found !== undefined) return Effect.succeed(found)
    }
    return Effect.fail(new Error(`no line: ${describe}; got ${JSON.stringify(lines.all.slice(-5))}`))
  }).pipe(
    Effect.retry(Schedule.spaced(Duration.millis(20))),
    Effect.timeoutFail({
      duration: timeout,
      onTimeout: () => new Error(`timed out after ${Duration.format(Duration.decode(timeout))} waiting for ${describe}`)
    })
  )

const json = (line: string): Record<string, unknown> | undefined => {
  try {
    const value: unknown = JSON.parse(line)
    return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : undefined
  } catch {
    return undefined
  }
}

const HostReady = Schema.Struct({
  runId: Schema.String,
  pid: Schema.Number,
  socket: Schema.String,
  workers: Schema.Array(Schema.Struct({ id: Schema.String, pid: Schema.Number }))
})

/** A live host: its run, pid, control socket and first workers. */
export interface LiveHost extends Schema.Schema.Type<typeof HostReady> {
  /** Calls `tool` inside the host (as its application would); the result, or the error's `_tag`. */
  readonly call: (
    tool: string,
    args: Record<string, unknown>
  ) => Effect.Effect<{ readonly ok?: unknown; readonly error?: string }, Error>
  /** Ends the host with SIGKILL, as `kill -9` would: no finalizer runs. */
  readonly kill9: Effect.Effect<void>
}

const liveHost = fileURLToPath(new URL("./fixtures/live-host.mjs", import.meta.url))

/**
 * Starts a real host (a pool with its control socket) in a child process on `dataDir`, and waits
 * until it is ready. When the scope closes it is stopped with SIGTERM (SIGKILL after 20 s), and
 * the scope's close fails if any process of its run is still alive.
 */
export const spawnHost = (dataDir: string, options: Record<string, unknown> = {}) =>
  Effect.gen(function* () {
    const stdout = new Lines()
    const stderr = new Lines()
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const child = spawn(process.execPath, [liveHost, dataDir, JSON.stringify(options)], {
          stdio: ["pipe", "pipe", "pipe"]
        })
        child.stdout.setEncoding("utf8").on("data", (chunk: string) => stdout.push(chunk))
        child.stderr.setEncoding("utf8").on("data", (chunk: string) => stderr.push(chunk))
        child.on("error", () => {})
        return child
      }),
      (child) =>
        Effect.async<void>((resume) => {
          if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
          const force = setTimeout(() => child.kill("SIGKILL"), 20_000)
          child.once("exit", () => {
            clearTimeout(force)
            resume(Effect.void)
          })
          child.kill("SIGTERM")
        })
    )
    const ready = yield* awaitLine(
      "the host's ready line",
      stdout,
      (line) => Option.getOrUndefined(Schema.decodeUnknownOption(HostReady)(json(line))),
      Duration.seconds(60)
    ).pipe(Effect.mapError((e) => new Error(`${e.message}; stderr: ${stderr.all.slice(-10).join("\n")}`)))
    let nextId = 0
    const call = (tool: string, args: Record<string, unknown>) =>
      Effect.suspend(() => {
        const id = ++nextId
        child.stdin!.write(`${JSON.stringify({ id, tool, args })}\n`)
        return awaitLine(
          `the answer to call ${id} (${tool})`,
          stdout,
          (line) => {
            const answer = json(line)
            return answer?.id === id ? (answer as { ok?: unknown; error?: string }) : undefined
          },
          Duration.seconds(60)
        )
      })
    const kill9 = Effect.sync(() => {
      child.kill("SIGKILL")
    })
    return { ...ready, call, kill9 } satisfies LiveHost
  })

/** The `snakepit` bin of this package, as built. */
const bin = fileURLToPath(new URL("../dist/bin.js", import.meta.url))

/** A `snakepit <args>` child process (the built bin), killed when the scope closes; its lines as they come. */
export const spawnCli = (...args: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const stdout = new Lines()
    const stderr = new Lines()
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const child = spawn(process.execPath, [bin, ...args], { stdio: ["ignore", "pipe", "pipe"] })
        child.stdout.setEncoding("utf8").on("data", (chunk: string) => stdout.push(chunk))
        child.stderr.setEncoding("utf8").on("data", (chunk: string) => stderr.push(chunk))
        child.on("error", () => {})
        return child
      }),
      (child) => Effect.sync(() => child.kill("SIGKILL"))
    )
    return {
      pid: child.pid!,
      stdout: stdout.all,
      stderr: stderr.all,
      /** The first stdout line `find` picks, within `timeout`. */
      awaitStdout: <A>(describe: string, find: (line: string) => A | undefined, timeout: Duration.DurationInput) =>
        awaitLine(describe, stdout, find, timeout),
      awaitStderr: <A>(describe: string, find: (line: string) => A | undefined, timeout: Duration.DurationInput) =>
        awaitLine(describe, stderr, find, timeout)
    }
  })

/** `line` as a JSON object, if it is one. */
export const jsonLine = json
