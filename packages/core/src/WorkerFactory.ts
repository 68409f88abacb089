/**
 * The seam between the pool and its workers. The pool only asks for a `PoolWorker`; the real
 * factory starts Python over gRPC (`Worker.make`), the testkit's fake scripts one in memory.
 *
 * @since 0.1.0
 */
import { CommandExecutor } from "@effect/platform/CommandExecutor"
import { NodeContext } from "@effect/platform-node"
import { Context, Effect, Layer, type Scope } from "effect"
import type { ConfigError, WorkerStartError } from "./errors.js"
import * as Worker from "./Worker.js"

/** What the pool needs of a worker. */
export interface PoolWorker {
  readonly id: string
  readonly pid: number
  readonly startedAt: Date
  readonly executeEncoded: Worker.Worker["executeEncoded"]
  readonly executeStream: Worker.Worker["executeStream"]
  readonly health: Worker.Worker["health"]
  readonly describeTools: Worker.Worker["describeTools"]
  readonly cleanupSession: Worker.Worker["cleanupSession"]
  /** Completes when the worker's process exits. */
  readonly exited: Effect.Effect<Worker.ExitStatus>
}

/** Starts workers for the pool, each in the scope it is given. */
export class WorkerFactory extends Context.Tag("@snakepit/core/WorkerFactory")<
  WorkerFactory,
  {
    readonly spawn: (
      options: Worker.WorkerOptions
    ) => Effect.Effect<PoolWorker, WorkerStartError | ConfigError, Scope.Scope>
  }
>() {
  /** Real Python workers, spawned with Node's child processes. */
  static readonly node: Layer.Layer<WorkerFactory> = Layer.effect(
    WorkerFactory,
    // Only the executor: capturing the whole layer context would also capture the layer's
    // Scope, and every worker would then be released with the layer instead of its own scope.
    Effect.map(CommandExecutor, (executor) => ({
      spawn: (options: Worker.WorkerOptions) => Effect.provideService(Worker.make(options), CommandExecutor, executor)
    }))
  ).pipe(Layer.provide(NodeContext.layer))
}
