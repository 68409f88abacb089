/**
 * Run ids: one per host process, carried on every worker's command line
 * (`--snakepit-run-id`) so that a later sweep can prove a process is ours before killing it.
 *
 * @since 0.1.0
 */
import { randomBytes } from "node:crypto"
import { Context, Effect, Layer } from "effect"

const PATTERN = /^r[0-9a-z]{8,}-[0-9a-f]{8}$/

/** Creates a fresh run id: base-36 start time plus 32 random bits. */
export const generate = (): string => `r${Date.now().toString(36)}-${randomBytes(4).toString("hex")}`

/** True when `value` has the shape of a run id (so it is safe to match on a command line). */
export const isRunId = (value: string): boolean => PATTERN.test(value)

let processRunId: string | undefined

/** The run id of this host process, created on first use and stable for the process's life. */
export const forProcess = (): string => {
  processRunId ??= generate()
  return processRunId
}

/** The run id workers of this host are started with. */
export class RunId extends Context.Tag("@snakepit/registry/RunId")<RunId, string>() {
  /** This host process's run id. */
  static readonly layer: Layer.Layer<RunId> = Layer.sync(RunId, forProcess)
  /** A fixed run id, for tests and for hosts that manage their own. */
  static readonly fixed = (runId: string): Layer.Layer<RunId> => Layer.succeed(RunId, runId)
}

/** The current run id: from the context when provided, else this process's. */
export const current: Effect.Effect<string> = Effect.serviceOption(RunId).pipe(
  Effect.map((option) => (option._tag === "Some" ? option.value : forProcess()))
)
