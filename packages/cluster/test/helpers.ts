/**
 * Real cluster tests: runner processes on loopback, each with a pool of real Python workers,
 * sharing one SQLite file; the test process joins as a client.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process"
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import { PgClient } from "@effect/sql-pg"
import { type ClusterOptions, SnakepitCluster } from "@snakepit/cluster"
import type { CallError } from "@snakepit/core"
import { Processes } from "@snakepit/testkit"
import { Duration, Effect, Either, Layer, Redacted, Schedule } from "effect"

const runnerScript = fileURLToPath(new URL("./fixtures/runner.mjs", import.meta.url))

export const SECRET = "test-cluster-secret-0123456789"

/**
 * Failover timings for tests: frequent health checks and refreshes. The lock expiration stays
 * generous: a runner refreshes its locks every third of it and gives up all its shards when a
 * refresh takes longer, which a shared SQLite file on two loaded cores can.
 */
export const fastFailover: ClusterOptions.ClusterOptions = {
  secret: SECRET,
  lockExpiration: "15 seconds",
  healthCheckInterval: "1 second",
  refreshInterval: "1 second",
  publishInterval: "1 second",
  deliveryTimeout: "60 seconds"
}

/** A port nothing listens on right now. */
export const freePort = Effect.async<number>((resume) => {
  const server = createServer()
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(Effect.succeed(port)))
  })
})

/** A temporary directory for one test's cluster storage and registries, removed at the end. */
export const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "snakepit-cluster-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

export interface Runner {
  readonly child: ChildProcess
  readonly runId: string
  readonly pid: number
  readonly address: string
  readonly instance: string
  /** Its Python workers' pids when it started. */
  readonly workers: ReadonlyArray<number>
}

/**
 * Starts a runner process and waits for its ready line. The process is a resource from the
 * moment it is spawned: when the test's scope closes, whatever happened, it is stopped (SIGTERM,
 * then SIGKILL after 10 s) and none of its Python processes may survive.
 */
export const startRunner = (options: {
  readonly dir: string
  readonly port: number
  readonly cluster?: ClusterOptions.ClusterOptions
  readonly pool?: object
  /** A PostgreSQL URL for the cluster's storage, instead of the SQLite file in `dir`. */
  readonly postgres?: string
}) =>
  Effect.gen(function* () {
    const cluster = {
      ...fastFailover,
      ...options.cluster,
      port: options.port,
      pool: { size: 2, affinity: "strict_queue", dataDir: options.dir, ...options.pool }
    }
    let runId: string | undefined
    // The last resort, should the scope never close (a test that hangs in its finalizers): the
    // runner dies with this process, and its workers with it (they watch their host).
    let spawned: ChildProcess | undefined
    const killAtExit = () => spawned?.kill("SIGKILL")
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => {
        process.once("exit", killAtExit)
        spawned = spawn(
          process.execPath,
          [
            runnerScript,
            JSON.stringify({ cluster, sqlite: join(options.dir, "cluster.db"), postgres: options.postgres })
          ],
          // The interpreter is found as for any pool (SNAKEPIT_PYTHON, else the usual candidates).
          { stdio: ["ignore", "pipe", "pipe"] }
        )
        return spawned
      }),
      (child) =>
        Effect.gen(function* () {
          process.off("exit", killAtExit)
          const pid = child.pid!
          if (child.exitCode === null && child.signalCode === null) {
            child.kill("SIGTERM")
            yield* Processes.awaitGone([pid], Duration.seconds(10)).pipe(
              Effect.catchAll(() => Effect.sync(() => child.kill("SIGKILL")))
            )
          }
          yield* Processes.awaitGone([pid], Duration.seconds(5)).pipe(Effect.orDie)
          if (runId !== undefined) yield* Processes.awaitRunGone(runId, Duration.seconds(10)).pipe(Effect.orDie)
        })
    )
    // Its log goes on to ours, and its last lines (either stream: runMain reports a failed
    // layer on stdout) go into the error if it dies before it is ready.
    const tail: Array<string> = []
    const keep = (line: string) => {
      process.stderr.write(`[runner ${options.port}] ${line}\n`)
      tail.push(line)
      if (tail.length > 40) tail.shift()
    }
    const stderrDone = new Promise<void>((resolve) =>
      createInterface({ input: child.stderr! }).on("line", keep).on("close", resolve)
    )
    const exited = new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve()
      else child.once("exit", () => resolve())
    })
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
    const ready = yield* Effect.promise(async () => {
      for (;;) {
        const line = await lines.next()
        if (line.done) {
          // stdout closes before the exit status and the last stderr lines arrive: wait for them.
          await Promise.race([Promise.all([exited, stderrDone]), new Promise((r) => setTimeout(r, 10_000))])
          throw new Error(
            `runner on port ${options.port} exited before it was ready ` +
              `(${child.exitCode ?? child.signalCode ?? "still running"}); its last lines:\n${tail.join("\n")}`
          )
        }
        if (String(line.value).startsWith("{")) return JSON.parse(String(line.value)) as Omit<Runner, "child">
        keep(String(line.value))
      }
    }).pipe(
      Effect.timeoutFail({
        duration: Duration.seconds(120),
        onTimeout: () => new Error(`runner on port ${options.port} not ready within 120 s`)
      })
    )
    runId = ready.runId
    return { ...ready, child } satisfies Runner
  })

/** The test process as a cluster client on the same storage. */
export const clientLayer = (dir: string, options: ClusterOptions.ClusterOptions = {}) =>
  SnakepitCluster.layerClient({ ...fastFailover, ...options }).pipe(
    Layer.provide(SnakepitCluster.sqlite(join(dir, "cluster.db")))
  )

/**
 * One step of a test, bounded: after `timeout` the test fails naming the step, even when the
 * step cannot be interrupted (it is disconnected and left to finish on its own).
 */
export const step = <A, E, R>(
  describe: string,
  effect: Effect.Effect<A, E, R>,
  timeout: Duration.DurationInput = Duration.seconds(30)
) =>
  effect.pipe(
    Effect.disconnect,
    Effect.timeoutFail({
      duration: timeout,
      onTimeout: () =>
        new Error(`step "${describe}" did not finish within ${Duration.format(Duration.decode(timeout))}`)
    })
  )

/** Checks `check` every 200 ms until it holds; fails the test after `timeout`. */
export const eventually = <E, R>(
  describe: string,
  check: Effect.Effect<boolean, E, R>,
  timeout: Duration.DurationInput = Duration.seconds(30)
) =>
  check.pipe(
    Effect.repeat({ until: (ok) => ok, schedule: Schedule.spaced(Duration.millis(200)) }),
    Effect.timeoutFail({
      duration: timeout,
      onTimeout: () => new Error(`not within ${Duration.format(Duration.decode(timeout))}: ${describe}`)
    })
  )

/**
 * Waits until `count` runners of equal weight each hold exactly their share of the shards: the
 * final assignment (@effect/cluster caps each runner at `shards × weight / total`), with no
 * shard still on its way from one runner to another.
 */
export const awaitSettled = (count: number, shards = 300) =>
  Effect.gen(function* () {
    const cluster = yield* SnakepitCluster.SnakepitCluster
    const share = Math.floor(shards / count)
    yield* eventually(
      `${count} runners each holding ${share} shards`,
      Effect.map(cluster.runners, (runners) => runners.length === count && runners.every((r) => r.shards === share)),
      Duration.seconds(90)
    )
  })

/** The newest PostgreSQL server binaries of the system's packages, if installed. */
export const postgresBin: string | undefined = (() => {
  const base = "/usr/lib/postgresql"
  if (!existsSync(base)) return undefined
  const versions = readdirSync(base)
    .filter((v) => existsSync(join(base, v, "bin", "initdb")))
    .sort((a, b) => Number(b) - Number(a))
  return versions[0] === undefined ? undefined : join(base, versions[0], "bin")
})()

/** PostgreSQL refuses to run as root: as root, run it as the packages' `postgres` user. */
const asPostgresUser = (command: string, args: ReadonlyArray<string>) => {
  const root = process.getuid?.() === 0
  const result = spawnSync(root ? "runuser" : command, root ? ["-u", "postgres", "--", command, ...args] : [...args], {
    encoding: "utf8",
    timeout: 60_000
  })
  if (result.status !== 0) throw new Error(`${command} failed: ${result.stderr || result.error?.message}`)
}

/**
 * A throwaway PostgreSQL server on a loopback port (initdb in a temporary directory), stopped
 * and removed when the scope closes. Resolves with its URL.
 */
export const startPostgres = Effect.acquireRelease(
  Effect.gen(function* () {
    const port = yield* freePort
    const dir = mkdtempSync(join(tmpdir(), "snakepit-pg-"))
    if (process.getuid?.() === 0) chownSync(dir, Number(execFileSync("id", ["-u", "postgres"]).toString().trim()), 0)
    const data = join(dir, "data")
    yield* Effect.sync(() => {
      asPostgresUser(join(postgresBin!, "initdb"), ["-D", data, "-A", "trust", "-U", "snakepit"])
      asPostgresUser(join(postgresBin!, "pg_ctl"), [
        "-D",
        data,
        "-o",
        `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1`,
        "-l",
        join(dir, "log"),
        "-w",
        "start"
      ])
    })
    return { dir, data, url: `postgres://snakepit@127.0.0.1:${port}/postgres` }
  }),
  ({ data, dir }) =>
    Effect.sync(() => {
      asPostgresUser(join(postgresBin!, "pg_ctl"), ["-D", data, "-m", "immediate", "-w", "stop"])
      rmSync(dir, { recursive: true, force: true })
    })
)

/** The test process as a cluster client on PostgreSQL storage. */
export const clientLayerPostgres = (url: string, options: ClusterOptions.ClusterOptions = {}) =>
  SnakepitCluster.layerClient({ ...fastFailover, ...options }).pipe(
    Layer.provide(PgClient.layer({ url: Redacted.make(url) }))
  )

/** What it took to get a call served after a runner died. */
export interface Served<A> {
  readonly value: A
  /** `RunnerUnreachable` answers: calls that raced the runner's death (written to its socket as it died). */
  readonly unreachable: number
  /** `SessionWorkerUnavailable` answers: the moved signal. */
  readonly moved: number
}

/**
 * Repeats `call` until it is served, counting the typed answers a session may get on the way
 * after its runner died; any other failure, or a call that outlasts `limit`, fails the test.
 */
export const untilServed = <A>(call: Effect.Effect<A, CallError>, limit: Duration.Duration) =>
  Effect.gen(function* () {
    let unreachable = 0
    let moved = 0
    for (let attempt = 0; attempt < 10; attempt++) {
      const result = yield* Effect.either(call).pipe(
        Effect.timeoutFail({
          duration: limit,
          onTimeout: () => new Error(`a call hung past ${Duration.format(limit)}`)
        })
      )
      if (Either.isRight(result)) return { value: result.right, unreachable, moved } satisfies Served<A>
      const error = result.left
      if (error._tag === "RunnerUnreachable" && moved === 0) unreachable++
      else if (error._tag === "SessionWorkerUnavailable") moved++
      else return yield* Effect.fail(new Error(`unexpected ${error._tag}: ${error.message}`))
    }
    return yield* Effect.fail(new Error("not served after 10 calls"))
  })
