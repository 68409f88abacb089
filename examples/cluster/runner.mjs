// One Snakepit cluster runner. Everything comes from the environment, through Effect Config:
//   SNAKEPIT_CLUSTER_HOST / SNAKEPIT_CLUSTER_PORT   where the other members reach it
//   SNAKEPIT_CLUSTER_SECRET                         the secret every member shares
//   SNAKEPIT_CLUSTER_SQLITE                         the storage file (one machine)
//   SNAKEPIT_SIZE, SNAKEPIT_AFFINITY, ...           its local pool, as for SnakepitPool.layer
// It prints one JSON line once it serves ({ address, instance, pid, runId, workers }), then
// serves until SIGTERM or SIGINT, and stops its workers on the way out.
import { NodeRuntime } from "@effect/platform-node"
import { SnakepitCluster } from "@snakepit/cluster"
import { RunId } from "@snakepit/registry"
import { Effect, Layer, Logger, LogLevel, Option } from "effect"

const program = Effect.gen(function* () {
  const cluster = yield* SnakepitCluster.SnakepitCluster
  const self = Option.getOrThrow(cluster.self)
  const runners = yield* cluster.runners
  const workers = runners.find((r) => r.instance === self.instance)?.pools.flatMap((p) => p.workers.map((w) => w.pid))
  console.log(JSON.stringify({ ...self, pid: process.pid, runId: RunId.forProcess(), workers: workers ?? [] }))
  return yield* Effect.never
}).pipe(
  Effect.provide(SnakepitCluster.layer().pipe(Layer.provide(SnakepitCluster.sqlite()))),
  // Logs go to stderr, so stdout carries only the ready line.
  Effect.provide(Logger.replace(Logger.defaultLogger, Logger.withConsoleError(Logger.logfmtLogger))),
  Logger.withMinimumLogLevel(LogLevel.Warning)
)

NodeRuntime.runMain(program)
