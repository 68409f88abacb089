/**
 * Finding a Python interpreter that can run the worker, and where the worker runtime lives.
 */
import { existsSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import type { CommandExecutor } from "@effect/platform/CommandExecutor"
import { Config, Effect, Either, Option } from "effect"
import {
  DEFAULT_REQUIRED_MODULES,
  describeMissing,
  inspect,
  installHint,
  type PythonEnvironment
} from "../PythonEnvironment.js"

/** Interpreters tried, in order, when neither the option nor `SNAKEPIT_PYTHON` names one. */
export const DEFAULT_CANDIDATES: ReadonlyArray<string> = ["python3", "/usr/bin/python3", "python"]

/** The oldest Python the worker runtime runs on. */
export const MIN_PYTHON: readonly [number, number] = [3, 10]

/** Why a tried interpreter was rejected; `environment` when it ran (too old, or missing modules). */
export interface Rejection {
  readonly python: string
  readonly why: string
  readonly environment?: PythonEnvironment | undefined
  /** The host ran out of a resource (EMFILE, ...) while trying it: not the interpreter's fault. */
  readonly exhausted?: string | undefined
}

/** Where the candidate list came from: the explicit option, `SNAKEPIT_PYTHON`, or the defaults. */
export type CandidateSource = "option" | "SNAKEPIT_PYTHON" | "default"

/** The interpreters to try, in order, and where that list came from. */
export interface Candidates {
  readonly source: CandidateSource
  readonly candidates: ReadonlyArray<string>
}

/** `explicit` if given, else `SNAKEPIT_PYTHON`, else {@link DEFAULT_CANDIDATES}. */
export const pythonCandidates = (explicit: string | undefined): Effect.Effect<Candidates> =>
  Config.option(Config.nonEmptyString("SNAKEPIT_PYTHON")).pipe(
    Effect.orDie,
    Effect.map(
      (fromEnv): Candidates =>
        explicit
          ? { source: "option", candidates: [explicit] }
          : Option.isSome(fromEnv)
            ? { source: "SNAKEPIT_PYTHON", candidates: [fromEnv.value] }
            : { source: "default", candidates: DEFAULT_CANDIDATES }
    )
  )

const tooOld = (version: string): boolean => {
  const [major = 0, minor = 0] = version.split(".").map(Number)
  return major < MIN_PYTHON[0] || (major === MIN_PYTHON[0] && minor < MIN_PYTHON[1])
}

/** The environment of `python` when it can run the worker (recent enough, imports `modules`), else why not. */
export const probePython = (
  python: string,
  modules: ReadonlyArray<string> = DEFAULT_REQUIRED_MODULES
): Effect.Effect<Either.Either<PythonEnvironment, Rejection>, never, CommandExecutor> =>
  inspect(python, modules).pipe(
    Effect.either,
    Effect.map(
      Either.match({
        onLeft: (notRunnable): Either.Either<PythonEnvironment, Rejection> =>
          Either.left({ python, why: notRunnable.why, exhausted: notRunnable.exhausted }),
        onRight: (environment): Either.Either<PythonEnvironment, Rejection> => {
          if (tooOld(environment.version)) {
            return Either.left({
              python,
              why: `Python ${environment.version} is too old: the worker runtime needs ${MIN_PYTHON.join(".")} or later`,
              environment
            })
          }
          return environment.missing.length > 0
            ? Either.left({ python, why: describeMissing(environment), environment })
            : Either.right(environment)
        }
      })
    )
  )

// Usable environments, by command and required modules: a command is probed once per process.
// Rejections are not remembered: the operator may install what was missing and try again.
const resolved = new Map<string, PythonEnvironment>()
const cacheKey = (python: string, modules: ReadonlyArray<string>) => [python, ...modules].join("\0")

/** The outcome of trying candidates in order: the first accepted one, and every rejection before it. */
export interface Resolution {
  readonly chosen: Option.Option<PythonEnvironment>
  readonly rejections: ReadonlyArray<Rejection>
}

/**
 * Tries `candidates` in order and stops at the first that can run the worker (from the cache
 * when it was resolved before), remembering it.
 */
export const tryCandidates = (
  candidates: ReadonlyArray<string>,
  modules: ReadonlyArray<string> = DEFAULT_REQUIRED_MODULES
): Effect.Effect<Resolution, never, CommandExecutor> =>
  Effect.gen(function* () {
    const rejections: Array<Rejection> = []
    for (const python of candidates) {
      const known = resolved.get(cacheKey(python, modules))
      if (known) return { chosen: Option.some(known), rejections }
      const outcome = yield* probePython(python, modules)
      if (Either.isRight(outcome)) {
        resolved.set(cacheKey(python, modules), outcome.right)
        return { chosen: Option.some(outcome.right), rejections }
      }
      rejections.push(outcome.left)
    }
    return { chosen: Option.none(), rejections }
  })

/**
 * The environment to run workers in: `explicit` if given, else `SNAKEPIT_PYTHON`, else the first
 * of {@link DEFAULT_CANDIDATES} that imports `modules` (default: what the gRPC transport needs).
 * Fails with every rejection when none can. Resolved once per command and remembered.
 */
export const resolvePythonEnvironment = (
  explicit: string | undefined,
  modules: ReadonlyArray<string> = DEFAULT_REQUIRED_MODULES
): Effect.Effect<PythonEnvironment, ReadonlyArray<Rejection>, CommandExecutor> =>
  Effect.flatMap(pythonCandidates(explicit), ({ candidates }) =>
    Effect.flatMap(tryCandidates(candidates, modules), ({ chosen, rejections }) =>
      Option.match(chosen, { onNone: () => Effect.fail(rejections), onSome: Effect.succeed })
    )
  )

/**
 * The interpreter executable to spawn workers with: the resolved environment's
 * `sys.executable` (never a shim). See {@link resolvePythonEnvironment}.
 */
export const resolvePython = (
  explicit: string | undefined,
  modules: ReadonlyArray<string> = DEFAULT_REQUIRED_MODULES
): Effect.Effect<string, ReadonlyArray<Rejection>, CommandExecutor> =>
  Effect.map(resolvePythonEnvironment(explicit, modules), (environment) => environment.executable)

/**
 * What to do when no candidate can run the worker: the fix for the first interpreter that ran
 * (the one the search would have used), in that environment's own terms.
 */
export const rejectionFix = (rejections: ReadonlyArray<Rejection>): string | undefined => {
  const ran = rejections.find((r) => r.environment !== undefined)?.environment
  if (ran === undefined) return undefined
  return tooOld(ran.version)
    ? `use Python ${MIN_PYTHON.join(".")} or later (e.g. a venv made with a newer python3)`
    : installHint(ran)
}

/**
 * The `detail` of a `python_not_found` WorkerStartError: each interpreter tried (what it
 * resolved to, why it was rejected), then the install command for the first one that ran.
 */
export const pythonNotFoundDetail = (rejections: ReadonlyArray<Rejection>): string => {
  const tried = rejections.map((r) =>
    r.environment === undefined
      ? `${r.python} (${r.why})`
      : `${r.environment.command}${r.environment.executable === r.environment.command ? "" : ` → ${r.environment.executable}`} (Python ${r.environment.version}, ${r.environment.kind}): ${r.why}`
  )
  const fix = rejectionFix(rejections)
  return (
    `no usable Python interpreter: ${tried.join("; ")}. ` +
    (fix === undefined ? "Install Python 3 with grpcio and protobuf. " : `To fix: ${fix}. `) +
    "Or name another interpreter with the `python` option or SNAKEPIT_PYTHON."
  )
}

/** The directories where the `snakepit_bridge` package is looked for, in order. */
export const bridgeRuntimeCandidates = (): ReadonlyArray<string> => {
  const here = dirname(fileURLToPath(import.meta.url))
  return [join(here, "..", "..", "python"), join(here, "..", "..", "..", "..", "python")]
}

/** The first of {@link bridgeRuntimeCandidates} holding `snakepit_bridge/server.py`, if any. */
export const findBridgeRuntime = (): string | undefined =>
  bridgeRuntimeCandidates().find((dir) => existsSync(join(dir, "snakepit_bridge", "server.py")))

/**
 * The directory holding the `snakepit_bridge` package: shipped inside this package as
 * `python/` by the build, or the repository's `python/` when running from source.
 */
export const bridgePythonPath = (): string => {
  const found = findBridgeRuntime()
  if (!found) throw new Error(`snakepit_bridge runtime not found; looked in ${bridgeRuntimeCandidates().join(", ")}`)
  return found
}
