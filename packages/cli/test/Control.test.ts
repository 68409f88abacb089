/**
 * The control API and the commands that use it, against a real host in a child process (a pool
 * of real Python workers with its control socket): status, top, restart, stop, resize, drain,
 * events, the socket's permissions, and what a host killed with SIGKILL leaves behind.
 * Every test leaves no process of its host's run behind.
 */
import { spawn } from "node:child_process"
import { chmodSync, existsSync, statSync } from "node:fs"
import { dirname } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Control } from "@snakepit/core"
import { ProcessInfo } from "@snakepit/registry"
import { Processes } from "@snakepit/testkit"
import { Duration, Effect, Fiber, Schedule, Schema, type Scope } from "effect"
import { jsonLine, type LiveHost, runCli, spawnCli, spawnHost, tempDir } from "./helpers.js"

const Worker = Schema.Struct({
  id: Schema.String,
  pid: Schema.Number,
  state: Schema.String,
  running: Schema.Array(Schema.String)
})
const Pool = Schema.Struct({
  pool: Schema.String,
  min: Schema.Number,
  max: Schema.Number,
  draining: Schema.Boolean,
  stats: Schema.Struct({ size: Schema.Number, ready: Schema.Number, busy: Schema.Number }),
  workers: Schema.Array(Worker)
})
const StatusJson = Schema.parseJson(
  Schema.Struct({
    runs: Schema.Array(
      Schema.Struct({
        runId: Schema.String,
        state: Schema.String,
        control: Schema.NullOr(
          Schema.Struct({
            socket: Schema.String,
            state: Schema.String,
            detail: Schema.NullOr(Schema.String),
            pools: Schema.Array(Pool)
          })
        )
      })
    ),
    unreachable: Schema.Array(Schema.Struct({ runId: Schema.String, state: Schema.String }))
  })
)
const TopJson = Schema.parseJson(
  Schema.Struct({ hosts: Schema.Array(Schema.Struct({ runId: Schema.String, pools: Schema.Array(Pool) })) })
)

/** The host's pool as `top --once --json` shows it. */
const topPool = (dir: string) =>
  Effect.gen(function* () {
    const top = yield* runCli("top", "--once", "--json", "--data-dir", dir)
    expect(top.code).toBe(0)
    const frame = yield* Schema.decodeUnknown(TopJson)(top.stdout)
    expect(frame.hosts).toHaveLength(1)
    return frame.hosts[0]!.pools[0]!
  })

/** Retries `check` (an Effect that fails until its condition holds) every 200 ms, for at most `timeout`. */
const eventually = <A, E>(check: Effect.Effect<A, E>, timeout: Duration.DurationInput = Duration.seconds(30)) =>
  check.pipe(Effect.retry(Schedule.spaced(Duration.millis(200))), Effect.timeout(timeout))

/** Runs `use` with a live host on a fresh data dir; afterwards, nothing of its run may be alive. */
const withHost = <A, E>(
  options: Record<string, unknown>,
  use: (host: LiveHost, dir: string) => Effect.Effect<A, E, Scope.Scope>
) =>
  Effect.gen(function* () {
    const dir = yield* tempDir
    let runId = ""
    const result = yield* Effect.scoped(
      Effect.flatMap(spawnHost(dir, options), (host) => {
        runId = host.runId
        return use(host, dir)
      })
    )
    if (runId !== "") yield* Processes.awaitRunGone(runId, Duration.seconds(30))
    return result
  })

describe("control API and commands, against a real host", () => {
  it.scopedLive("status --json lists the host's pools and workers with the pids the OS shows; top --once too", () =>
    withHost({ size: 2 }, (host, dir) =>
      Effect.gen(function* () {
        const status = yield* runCli("status", "--json", "--data-dir", dir)
        expect(status.code).toBe(0)
        const json = yield* Schema.decodeUnknown(StatusJson)(status.stdout)
        const run = json.runs.find((r) => r.runId === host.runId)!
        expect(run.state).toBe("live")
        expect(run.control).toMatchObject({ socket: host.socket, state: "ok", detail: null })
        const workers = run.control!.pools[0]!.workers
        expect(workers.map((w) => w.pid).sort()).toEqual(host.workers.map((w) => w.pid).sort())
        for (const worker of workers) {
          expect(ProcessInfo.isAlive(worker.pid)).toBe(true)
          expect(ProcessInfo.carriesRunId(ProcessInfo.commandLine(worker.pid) ?? "", host.runId)).toBe(true)
        }
        const text = yield* runCli("status", "--data-dir", dir)
        expect(text.stdout).toContain(`control: ${host.socket}`)
        expect(text.stdout).not.toContain("\u001b[") // piped: no ANSI codes
        const pool = yield* topPool(dir)
        expect(pool).toMatchObject({ pool: "default", min: 2, max: 2, stats: { size: 2, ready: 2, busy: 0 } })
        const topText = yield* runCli("top", "--once", "--data-dir", dir)
        expect(topText.code).toBe(0)
        expect(topText.stdout).toMatch(/default-1\.1 +\d+ +ready/)
        expect(topText.stdout).not.toContain("\u001b[")
      })
    )
  )

  it.scopedLive("restart gives a new pid and the old process is gone; stop removes a worker; unknown ids exit 3", () =>
    withHost({ size: 2 }, (host, dir) =>
      Effect.gen(function* () {
        const old = host.workers.find((w) => w.id === "default-1.1")!
        const restart = yield* runCli("restart", "default-1.1", "--json", "--data-dir", dir)
        expect(restart.code).toBe(0)
        const answer = JSON.parse(restart.stdout) as { replacement: { id: string; pid: number } }
        expect(answer.replacement.id).toBe("default-1.2")
        expect(answer.replacement.pid).not.toBe(old.pid)
        expect(ProcessInfo.isAlive(old.pid)).toBe(false)
        expect(ProcessInfo.isAlive(answer.replacement.pid)).toBe(true)

        const other = host.workers.find((w) => w.id === "default-2.1")!
        const stop = yield* runCli("stop", "default-2.1", "--data-dir", dir)
        expect(stop.code).toBe(0)
        expect(stop.stdout).toContain(`stopped default-2.1 (pid ${other.pid})`)
        expect(ProcessInfo.isAlive(other.pid)).toBe(false)
        expect((yield* topPool(dir)).workers.map((w) => w.id)).toEqual(["default-1.2"])

        const missing = yield* runCli("restart", "default-9.9", "--data-dir", dir)
        expect(missing.code).toBe(3)
        expect(missing.stderr).toContain("no worker default-9.9")
        const badSize = yield* runCli("resize", "default", "3..1", "--data-dir", dir)
        expect(badSize.code).toBe(1)
        expect(badSize.stderr).toContain("expected min (3) <= max (1)")
      })
    )
  )

  it.scopedLive("resize 4 reaches 4 ready workers", () =>
    withHost({ size: 1 }, (_host, dir) =>
      Effect.gen(function* () {
        const resize = yield* runCli("resize", "default", "4", "--data-dir", dir)
        expect(resize.code).toBe(0)
        expect(resize.stdout).toContain("min 4, max 4 (was min 1, max 1)")
        const pool = yield* eventually(
          Effect.filterOrFail(topPool(dir), (p) => p.stats.ready === 4 && p.workers.every((w) => w.state === "ready"))
        )
        expect(new Set(pool.workers.map((w) => w.pid)).size).toBe(4)
        for (const worker of pool.workers) expect(ProcessInfo.isAlive(worker.pid)).toBe(true)
      })
    )
  )

  it.scopedLive("drain lets the running call finish and refuses new calls with PoolDraining", () =>
    withHost({ size: 1 }, (host, dir) =>
      Effect.gen(function* () {
        const running = yield* Effect.fork(host.call("sleep", { ms: 3000 }))
        yield* eventually(Effect.filterOrFail(topPool(dir), (p) => p.workers[0]?.running[0] === "sleep"))
        const drain = yield* Effect.fork(runCli("drain", "default", "--data-dir", dir))
        yield* eventually(Effect.filterOrFail(topPool(dir), (p) => p.draining))
        expect(yield* host.call("echo", { value: 1 })).toEqual({ id: expect.any(Number), error: "PoolDraining" })
        expect(drain.unsafePoll()).toBeNull() // the sleep still runs
        expect(yield* Fiber.join(running)).toMatchObject({ ok: { slept_ms: 3000 } })
        const drained = yield* Fiber.join(drain)
        expect(drained.code).toBe(0)
        expect(drained.stdout).toContain("pool default of run")
        expect(drained.stdout).toContain("drained")
      })
    )
  )

  it.scopedLive("events --follow prints a worker's crash within a second of its kill -9", () =>
    withHost({ size: 1 }, (host, dir) =>
      Effect.gen(function* () {
        const events = yield* spawnCli("events", "--follow", "--json", "--data-dir", dir)
        yield* events.awaitStderr(
          "following",
          (line) => (line.startsWith("following") ? line : undefined),
          "30 seconds"
        )
        // "following" is printed before the subscription reaches the host: subscribed once an
        // event made after the command started reaches it (a resize made earlier is not seen).
        yield* Effect.zipRight(
          Effect.flatMap(runCli("resize", "default", "1", "--data-dir", dir), (r) =>
            Effect.sync(() => expect(r.code).toBe(0))
          ),
          events.awaitStdout("Resized", (line) => (jsonLine(line)?._tag === "Resized" ? line : undefined), "3 seconds")
        ).pipe(Effect.retry({ times: 10 }))
        const worker = host.workers[0]!
        process.kill(worker.pid, "SIGKILL")
        const crashed = yield* events.awaitStdout(
          "the Crashed event",
          (line) => {
            const event = jsonLine(line)
            return event?._tag === "Crashed" && event.workerId === worker.id ? event : undefined
          },
          "1 second"
        )
        expect(crashed).toMatchObject({ runId: host.runId, pool: "default", pid: worker.pid, signal: "SIGKILL" })
        yield* events.awaitStdout(
          "the replacement",
          (line) => (jsonLine(line)?._tag === "Restarted" ? line : undefined),
          "30 seconds"
        )
      })
    )
  )

  it.scopedLive("the socket is 0600 in a 0700 directory: another user is refused", () =>
    withHost({ size: 1 }, (host, dir) =>
      Effect.gen(function* () {
        const controlDir = dirname(host.socket)
        expect(statSync(host.socket).isSocket()).toBe(true)
        expect(statSync(host.socket).mode & 0o777).toBe(0o600)
        expect(statSync(controlDir).mode & 0o777).toBe(0o700)
        if (process.getuid?.() !== 0) return // only root can act as another user here
        /** Connects as `nobody`; what happened. */
        const connectAsNobody = Effect.async<string>((resume) => {
          const script = `require("node:net").connect(${JSON.stringify(host.socket)}).on("connect", () => { console.log("connected"); process.exit(0) }).on("error", (e) => { console.log(e.code); process.exit(0) })`
          const child = spawn(process.execPath, ["-e", script], {
            uid: 65534,
            gid: 65534,
            stdio: ["ignore", "pipe", "pipe"]
          })
          let out = ""
          child.stdout.on("data", (chunk) => {
            out += chunk
          })
          child.on("close", () => resume(Effect.succeed(out.trim())))
        }).pipe(Effect.timeout("20 seconds"))
        // The data dir is open to others here; the control directory alone keeps them out...
        chmodSync(dir, 0o755)
        expect(yield* connectAsNobody).toBe("EACCES")
        // ...and with the directory opened too, the socket's own mode still refuses.
        chmodSync(controlDir, 0o755)
        expect(yield* connectAsNobody).toBe("EACCES")
        chmodSync(controlDir, 0o700)
        // This user is served.
        const pools = yield* Effect.scoped(Effect.flatMap(Control.connect(host.socket), (client) => client.Pools()))
        expect(pools[0]!.workers).toHaveLength(1)
      })
    )
  )

  it.scopedLive(
    "a host killed with SIGKILL leaves a stale socket: reported clearly, never waited on; sweep removes it",
    () =>
      withHost({ size: 1 }, (host, dir) =>
        Effect.gen(function* () {
          yield* host.kill9
          yield* Processes.awaitGone([host.pid])
          // Its workers follow it on their own (stdin EOF, PDEATHSIG).
          yield* Processes.awaitRunGone(host.runId, Duration.seconds(30))
          expect(existsSync(host.socket)).toBe(true)
          // Connecting now fails at once as stale. (Right after the kill the kernel may still accept a
          // connection for a moment, on some kernels: then the request fails instead; never a wait.)
          const refused = yield* eventually(
            Effect.scoped(Control.connect(host.socket)).pipe(
              Effect.flatMap(() => Effect.fail("still accepting" as const)),
              Effect.catchTag("ControlUnavailable", (e) =>
                e.reason === "stale" ? Effect.succeed(e) : Effect.fail("not stale" as const)
              )
            ),
            Duration.seconds(10)
          )
          expect(refused).toMatchObject({ _tag: "ControlUnavailable", reason: "stale", socket: host.socket })
          expect(refused.message).toContain("stale control socket")

          const status = yield* runCli("status", "--json", "--data-dir", dir)
          expect(status.code).toBe(1)
          const json = yield* Schema.decodeUnknown(StatusJson)(status.stdout)
          expect(json.runs[0]).toMatchObject({ runId: host.runId, state: "dead", control: { state: "stale" } })
          expect(json.unreachable).toEqual([expect.objectContaining({ runId: host.runId, state: "stale" })])
          const text = yield* runCli("status", "--data-dir", dir)
          expect(text.stdout).toContain(`FAIL  run ${host.runId} is dead and left its control socket ${host.socket}`)
          expect(text.stdout).toContain("fix: run `snakepit sweep")
          // No live host: the live commands say so with exit code 3 instead of waiting.
          const top = yield* runCli("top", "--once", "--data-dir", dir)
          expect(top.code).toBe(3)
          expect(top.stderr).toContain("no live host")

          const sweep = yield* runCli("sweep", "--data-dir", dir)
          expect(sweep.code).toBe(0)
          expect(existsSync(host.socket)).toBe(false)
          expect((yield* runCli("status", "--data-dir", dir)).code).toBe(0)
        })
      )
  )
})
