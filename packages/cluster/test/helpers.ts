/**
 * Real cluster tests: runner processes on loopback, each with a pool of real Python workers,
 * sharing one SQLite file; the test process joins as a client.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import { type ClusterOptions, SnakepitCluster } from "@snakepit/cluster"
import { Processes } from "@snakepit/testkit"
import { Duration, Effect, Layer, Schedule } from "effect"

const runnerScript = fileURLToPath(new URL("./fixtures/runner.mjs", import.meta.url))

export const SECRET = "test-cluster-secret-0123456789"

/** Failover timings for tests: short lock expiry, frequent health checks and refreshes. */
export const fastFailover: ClusterOptions.ClusterOptions = {
  secret: SECRET,
  lockExpiration: "6 seconds",
  healthCheckInterval: "1 second",
  refreshInterval: "1 second",
  publishInterval: "500 millis",
  deliveryTimeout: "30 seconds"
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
 * Starts a runner process and waits for its ready line. When the test's scope closes it is
 * stopped (SIGTERM, then SIGKILL after 10 s), and none of its Python processes may survive.
 */
export const startRunner = (options: {
  readonly dir: string
  readonly port: number
  readonly cluster?: ClusterOptions.ClusterOptions
  readonly pool?: object
}) =>
  Effect.acquireRelease(
    Effect.gen(function* () {
      const cluster = {
        ...fastFailover,
        ...options.cluster,
        port: options.port,
        pool: { size: 2, affinity: "strict_queue", dataDir: options.dir, ...options.pool }
      }
      const child = spawn(
        process.execPath,
        [runnerScript, JSON.stringify({ cluster, sqlite: join(options.dir, "cluster.db") })],
        {
          stdio: ["ignore", "pipe", "inherit"],
          env: { ...process.env, SNAKEPIT_PYTHON: process.env.SNAKEPIT_PYTHON ?? "/work/venv-dev/bin/python" }
        }
      )
      const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
      const ready = yield* Effect.promise(async () => {
        for (;;) {
          const line = await lines.next()
          if (line.done) throw new Error(`runner on port ${options.port} exited before it was ready`)
          if (String(line.value).startsWith("{")) return JSON.parse(String(line.value)) as Omit<Runner, "child">
        }
      }).pipe(
        Effect.timeoutFail({
          duration: Duration.seconds(60),
          onTimeout: () => new Error(`runner on port ${options.port} not ready within 60 s`)
        })
      )
      return { ...ready, child }
    }),
    (runner) =>
      Effect.gen(function* () {
        if (runner.child.exitCode === null && runner.child.signalCode === null) {
          runner.child.kill("SIGTERM")
          yield* Processes.awaitGone([runner.pid], Duration.seconds(10)).pipe(
            Effect.catchAll(() => Effect.sync(() => runner.child.kill("SIGKILL")))
          )
        }
        yield* Processes.awaitGone([runner.pid], Duration.seconds(5)).pipe(Effect.orDie)
        yield* Processes.awaitRunGone(runner.runId, Duration.seconds(10)).pipe(Effect.orDie)
      })
  )

/** The test process as a cluster client on the same storage. */
export const clientLayer = (dir: string, options: ClusterOptions.ClusterOptions = {}) =>
  SnakepitCluster.layerClient({ ...fastFailover, ...options }).pipe(
    Layer.provide(SnakepitCluster.sqlite(join(dir, "cluster.db")))
  )

/** Waits until `count` runners hold every shard between them, each some: the cluster has settled. */
export const awaitSettled = (count: number, shards = 300) =>
  Effect.gen(function* () {
    const cluster = yield* SnakepitCluster.SnakepitCluster
    yield* Effect.flatMap(cluster.runners, (runners) =>
      runners.length === count &&
      runners.every((r) => r.shards > 0) &&
      runners.reduce((n, r) => n + r.shards, 0) === shards
        ? Effect.void
        : Effect.fail(new Error(`not settled: ${JSON.stringify(runners.map((r) => [r.address, r.shards]))}`))
    ).pipe(
      Effect.retry(Schedule.spaced(Duration.millis(200))),
      Effect.timeoutFail({
        duration: Duration.seconds(60),
        onTimeout: () => new Error("the cluster did not settle in 60 s")
      })
    )
  })
