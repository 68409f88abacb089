// Three Snakepit cluster runners on one machine, and this process as a client of the cluster:
// sessions spread over the runners and stay on one worker, a stream, then kill -9 of one
// runner and its sessions moving to the other two. Run it after a build:
//   SNAKEPIT_PYTHON=/path/to/python node examples/cluster/demo.mjs
import { randomBytes } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { SnakepitCluster } from "@snakepit/cluster"
import { Snakepit } from "@snakepit/core"
import { Clock, Console, Duration, Effect, Either, Layer, Logger, LogLevel, Schedule, Stream } from "effect"
import { freePort, startRunner } from "./start.mjs"

const dir = mkdtempSync(join(tmpdir(), "snakepit-cluster-demo-"))
const cluster = {
  SNAKEPIT_CLUSTER_SECRET: randomBytes(24).toString("hex"),
  SNAKEPIT_CLUSTER_SQLITE: join(dir, "cluster.db"),
  // Short failover timings for a demo; the defaults suit production.
  SNAKEPIT_CLUSTER_LOCK_EXPIRATION: "6 seconds",
  SNAKEPIT_CLUSTER_HEALTH_INTERVAL: "1 second",
  SNAKEPIT_CLUSTER_PUBLISH_INTERVAL: "500 millis"
}
const pool = { SNAKEPIT_SIZE: "2", SNAKEPIT_AFFINITY: "strict_queue", SNAKEPIT_DATA_DIR: dir }

const heading = (text) => Console.log(`\n\x1b[1m${text}\x1b[0m`)

console.log("starting three runners on 127.0.0.1, each with a pool of two Python workers ...")
const ports = [await freePort(), await freePort(), await freePort()]
const runners = await Promise.all(ports.map((port) => startRunner(port, { ...cluster, ...pool })))
const runnerOf = (pid) => runners.find((r) => r.workers.includes(pid))?.address ?? "?"

const program = Effect.gen(function* () {
  const snakepit = yield* Snakepit
  const info = yield* SnakepitCluster.SnakepitCluster

  // Wait until each of the three runners holds its final third of the shards.
  yield* Effect.flatMap(info.runners, (rs) =>
    rs.length === 3 && rs.every((r) => r.shards === info.options.shards / 3) ? Effect.void : Effect.fail("not settled")
  ).pipe(Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 300 }))

  yield* heading("The cluster")
  for (const r of yield* info.runners) {
    yield* Console.log(
      `  runner ${r.address}: ${r.shards} shards, workers ${r.pools[0].workers.map((w) => w.pid).join(", ")}`
    )
  }

  yield* heading("Sessions: each lives on one runner, on one worker")
  const sessions = Array.from({ length: 9 }, (_, i) => `user-${i}`)
  for (const session of sessions) {
    yield* snakepit.execute("session_put", { key: "cart", value: [session] }, { session })
    const { pid } = yield* snakepit.execute("ping", {}, { session })
    yield* Console.log(`  ${session} -> runner ${runnerOf(pid)}, worker ${pid}`)
  }

  yield* heading("Calls without a session are spread over the runners")
  const pids = yield* Effect.forEach(Array.from({ length: 9 }), () => snakepit.execute("ping"))
  yield* Console.log(`  runners: ${pids.map(({ pid }) => runnerOf(pid)).join(", ")}`)

  yield* heading("A stream through the cluster")
  const chunks = yield* Stream.runCollect(snakepit.executeStream("stream_numbers", { count: 5 }, { session: "user-0" }))
  yield* Console.log(`  ${JSON.stringify([...chunks])}`)

  const victim = runners[0]
  yield* heading(`kill -9 of runner ${victim.address}`)
  const moving = []
  for (const session of sessions) {
    const { pid } = yield* snakepit.execute("ping", {}, { session })
    if (victim.workers.includes(pid)) moving.push(session)
  }
  const killedAt = yield* Clock.currentTimeMillis
  victim.child.kill("SIGKILL")
  yield* Effect.promise(() => victim.exited)
  for (const session of moving) {
    const first = yield* Effect.either(snakepit.execute("session_get", { key: "cart" }, { session }))
    const moved = Either.isLeft(first) ? `${first.left._tag}: ${first.left.message}` : "no signal?"
    const cart = yield* snakepit.execute("session_get", { key: "cart" }, { session })
    const { pid } = yield* snakepit.execute("ping", {}, { session })
    const after = Duration.format(Duration.millis((yield* Clock.currentTimeMillis) - killedAt))
    yield* Console.log(
      `  ${session}: ${moved}\n    then served by runner ${runnerOf(pid)}, worker ${pid} (${after} after the kill); cart: ${JSON.stringify(cart)}`
    )
  }
  yield* Console.log(`  (the bound for this configuration: ${Duration.format(info.failoverBound)})`)

  yield* heading("Stats of the cluster's pools")
  yield* Console.log(`  ${JSON.stringify(yield* snakepit.stats())}`)
}).pipe(
  // This process joins as a client: the same SNAKEPIT_CLUSTER_* settings, no pool.
  Effect.provide(SnakepitCluster.layerClient().pipe(Layer.provide(SnakepitCluster.sqlite()))),
  Effect.provide(Logger.minimumLogLevel(LogLevel.Warning))
)

Object.assign(process.env, cluster)
let failed = false
try {
  await Effect.runPromise(program)
} catch (error) {
  failed = true
  console.error(error)
} finally {
  await Promise.all(runners.map((r) => r.stop()))
  const alive = runners
    .flatMap((r) => r.workers)
    .filter((pid) => {
      try {
        process.kill(pid, 0)
        return true
      } catch {
        return false
      }
    })
  console.log(`
runners stopped; Python workers still alive: ${alive.length === 0 ? "none" : alive.join(", ")}`)
  rmSync(dir, { recursive: true, force: true })
  if (alive.length > 0) failed = true
}
process.exit(failed ? 1 : 0)
