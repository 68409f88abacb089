/**
 * Real-Python fixtures for integration suites.
 *
 * @since 0.1.0
 */
import { NodeContext } from "@effect/platform-node"
import { Worker } from "@snakepit/core"
import { RunId } from "@snakepit/registry"
import { Effect, Scope } from "effect"
import { awaitRunGone, processesOfRun } from "./Processes.js"

/**
 * Runs `use` with a worker of the showcase adapter (or `options.adapter`) under a fresh run
 * id, closes the worker's scope, then fails unless no process of that run is still alive.
 */
export const withWorker = <A, E>(
  use: (worker: Worker.Worker) => Effect.Effect<A, E>,
  options: Worker.WorkerOptions = {}
) =>
  Effect.gen(function* () {
    const runId = options.runId ?? RunId.generate()
    const scope = yield* Scope.make()
    const exit = yield* Worker.make({ ...options, runId }).pipe(Effect.flatMap(use), Scope.extend(scope), Effect.exit)
    yield* Scope.close(scope, exit)
    yield* assertNoSurvivors(runId)
    return yield* exit
  }).pipe(Effect.provide(NodeContext.layer))

/** Fails, naming them, if processes of run `runId` are still alive after a short grace. */
export const assertNoSurvivors = (runId: string) =>
  awaitRunGone(runId).pipe(
    Effect.mapError(() => new Error(`survivors of run ${runId}: ${JSON.stringify(processesOfRun(runId))}`))
  )
