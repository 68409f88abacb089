/**
 * Real-Python fixtures for integration suites: each runs under a fresh run id and, after its
 * scope closes, proves with the OS that no process of that run is alive.
 *
 * @since 0.1.0
 */
import { NodeContext } from "@effect/platform-node"
import { type SnakepitOptions, SnakepitPool, type SnakepitService, Worker, WorkerFactory } from "@snakepit/core"
import { RunId } from "@snakepit/registry"
import { Effect, Exit, Scope } from "effect"
import { awaitRunGone, processesOfRun } from "./Processes.js"

/** Runs `use` in a fresh scope under a fresh run id, closes the scope, then asserts no survivors. */
const underFreshRun = <A, E, R>(use: (scope: Scope.Scope) => Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const runId = RunId.generate()
    const scope = yield* Scope.make()
    const exit = yield* use(scope).pipe(Effect.provide(RunId.RunId.fixed(runId)), Effect.exit)
    yield* Scope.close(scope, Exit.void)
    yield* assertNoSurvivors(runId)
    return yield* exit
  })

/**
 * Runs `use` with a real worker of the showcase adapter (or `options.adapter`), closes it, and
 * fails if any process of its run (worker or grandchild) is still alive.
 */
export const withWorker = <A, E>(
  use: (worker: Worker.Worker) => Effect.Effect<A, E>,
  options: Worker.WorkerOptions = {}
) =>
  underFreshRun((scope) => Worker.make(options).pipe(Scope.extend(scope), Effect.flatMap(use))).pipe(
    Effect.provide(NodeContext.layer)
  )

/**
 * Runs `use` with a real pool (default: 2 showcase workers), closes it, and fails if any
 * process of its run is still alive.
 */
export const withPool = <A, E>(use: (pool: SnakepitService) => Effect.Effect<A, E>, options: SnakepitOptions = {}) =>
  underFreshRun((scope) => SnakepitPool.make(options).pipe(Scope.extend(scope), Effect.flatMap(use))).pipe(
    Effect.provide(WorkerFactory.node)
  )

/** Fails, naming them, if processes of run `runId` are still alive after a short grace. */
export const assertNoSurvivors = (runId: string) =>
  awaitRunGone(runId).pipe(
    Effect.mapError(() => new Error(`survivors of run ${runId}: ${JSON.stringify(processesOfRun(runId))}`))
  )
