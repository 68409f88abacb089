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
import { type Console, Duration, Effect, Schema } from "effect"
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
