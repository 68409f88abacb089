/**
 * What a diagnostics tool (`snakepit doctor`) needs to see of the core without starting a
 * pool: the interpreter search exactly as workers do it, with every candidate's environment
 * (what it resolves to, its kind, which modules import) and reason for rejection; where the
 * worker runtime is; and the options the pool would resolve from the environment.
 *
 * Nothing here changes how workers start: {@link diagnosePython} walks the same candidates with
 * the same probe as `Worker.make`, and a successful diagnosis is remembered like a resolution.
 *
 * @since 0.1.0
 */
import type { CommandExecutor } from "@effect/platform/CommandExecutor"
import { Effect, Option } from "effect"
import type { ConfigError } from "./errors.js"
import { resolvePoolSize as resolveSize, resolveSnakepitOptions } from "./internal/config.js"
import {
  bridgeRuntimeCandidates,
  type CandidateSource,
  DEFAULT_CANDIDATES,
  findBridgeRuntime,
  MIN_PYTHON,
  pythonCandidates,
  rejectionFix,
  tryCandidates
} from "./internal/python.js"
import type { PoolSize, ResolvedPoolOptions, SnakepitOptions } from "./PoolOptions.js"
import { DEFAULT_REQUIRED_MODULES, type PythonEnvironment } from "./PythonEnvironment.js"

export { type CandidateSource, DEFAULT_CANDIDATES, MIN_PYTHON }

/** One candidate the search tried. */
export interface TriedInterpreter {
  /** The candidate as configured (a name on PATH or a path). */
  readonly python: string
  /** What it resolved to, when it ran at all. */
  readonly environment: PythonEnvironment | undefined
  /** True for the interpreter workers will run with. */
  readonly accepted: boolean
  /** Why the search rejected it (the same reason `WorkerStartError` gives), when it did. */
  readonly rejection: string | undefined
}

/** The interpreter search, step by step. */
export interface PythonDiagnosis {
  /** Where the candidate list came from: the `python` option, `SNAKEPIT_PYTHON`, or the defaults. */
  readonly source: CandidateSource
  /** Every candidate, in the order the search tries them. */
  readonly candidates: ReadonlyArray<string>
  /** The modules each candidate was checked for. */
  readonly modules: ReadonlyArray<string>
  /** The candidates actually tried: every rejected one up to the chosen one, or all when none is usable. */
  readonly tried: ReadonlyArray<TriedInterpreter>
  /** The environment workers will run in, if any. */
  readonly chosen: PythonEnvironment | undefined
  /**
   * When none is usable: what to do, for the first interpreter that ran (its exact install
   * command, the same text as in `WorkerStartError`); undefined when none ran.
   */
  readonly fix: string | undefined
}

/**
 * Runs the interpreter search exactly as a worker does (`explicit`, else `SNAKEPIT_PYTHON`, else
 * {@link DEFAULT_CANDIDATES}, the first that imports `modules` wins) and describes each
 * candidate it tried. Never fails: no usable interpreter is `chosen: undefined`.
 */
export const diagnosePython = (
  explicit?: string,
  modules: ReadonlyArray<string> = DEFAULT_REQUIRED_MODULES
): Effect.Effect<PythonDiagnosis, never, CommandExecutor> =>
  Effect.gen(function* () {
    const { source, candidates } = yield* pythonCandidates(explicit)
    const { chosen, rejections } = yield* tryCandidates(candidates, modules)
    const tried: Array<TriedInterpreter> = rejections.map((r) => ({
      python: r.python,
      environment: r.environment,
      accepted: false,
      rejection: r.why
    }))
    if (Option.isSome(chosen)) {
      tried.push({ python: chosen.value.command, environment: chosen.value, accepted: true, rejection: undefined })
    }
    return {
      source,
      candidates,
      modules,
      tried,
      chosen: Option.getOrUndefined(chosen),
      fix: Option.isSome(chosen) ? undefined : rejectionFix(rejections)
    }
  })

/** Where the `snakepit_bridge` worker runtime is (`path`), or every directory that was searched. */
export interface BridgeRuntime {
  readonly path: string | undefined
  readonly lookedIn: ReadonlyArray<string>
}

/** Locates the worker runtime the way `Worker.make` does (the package's `python/` directory). */
export const bridgeRuntime = (): BridgeRuntime => ({ path: findBridgeRuntime(), lookedIn: bridgeRuntimeCandidates() })

/**
 * Resolves pool options the way `SnakepitPool.layer` does: code `options` over `SNAKEPIT_*`
 * environment variables over defaults. Fails with the `ConfigError` the pool would fail with.
 */
export const resolveOptions = (
  options: SnakepitOptions = {}
): Effect.Effect<ReadonlyArray<ResolvedPoolOptions>, ConfigError> => resolveSnakepitOptions(options)

/**
 * Resolves a pool size the way `resize` does: a number fixes it, `{ min, max }` makes it
 * elastic. Fails with the `ConfigError` keyed `size` that `resize` would fail with.
 *
 * @since 0.1.0
 * @category options
 */
export const resolvePoolSize = (
  size: PoolSize
): Effect.Effect<{ readonly min: number; readonly max: number }, ConfigError> => resolveSize(size)
