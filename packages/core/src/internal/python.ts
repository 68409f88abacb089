/**
 * Finding a Python interpreter that can run the worker, and where the worker runtime lives.
 */
import { existsSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { Command } from "@effect/platform"
import type { CommandExecutor } from "@effect/platform/CommandExecutor"
import { Config, Duration, Effect, Option } from "effect"

/** Interpreters tried, in order, when neither the option nor `SNAKEPIT_PYTHON` names one. */
export const DEFAULT_CANDIDATES: ReadonlyArray<string> = ["python3", "/usr/bin/python3", "python"]

/** The modules the gRPC transport needs; the local transport needs only the standard library. */
export const GRPC_MODULES: ReadonlyArray<string> = ["grpc", "google.protobuf"]

const probeOf = (modules: ReadonlyArray<string>) =>
  `import sys; assert sys.version_info >= (3, 9)${modules.map((m) => `; import ${m}`).join("")}; print(sys.version.split()[0])`

/** Why each tried interpreter was rejected. */
export interface Rejection {
  readonly python: string
  readonly why: string
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

/** None when `python` can run the worker (imports `modules`), else why not. */
export const probePython = (
  python: string,
  modules: ReadonlyArray<string> = GRPC_MODULES
): Effect.Effect<Option.Option<Rejection>, never, CommandExecutor> =>
  Command.make(python, "-c", probeOf(modules)).pipe(
    Command.env({ PYTHONDONTWRITEBYTECODE: "1" }),
    Command.exitCode,
    Effect.timeout(Duration.seconds(20)),
    Effect.map((code) =>
      code === 0
        ? Option.none()
        : Option.some({
            python,
            why: `is not a Python 3.9+ interpreter${modules.length > 0 ? ` that can import ${modules.join(" and ")}` : ""}`
          })
    ),
    Effect.catchTags({
      SystemError: (e) =>
        Effect.succeed(Option.some({ python, why: e.reason === "NotFound" ? "not found" : e.message })),
      BadArgument: (e) => Effect.succeed(Option.some({ python, why: e.message })),
      TimeoutException: () => Effect.succeed(Option.some({ python, why: "did not answer within 20 s" }))
    })
  )

const resolved = new Map<string, string>()

/** The outcome of trying candidates in order: the first accepted one, and every rejection before it. */
export interface Resolution {
  readonly chosen: Option.Option<string>
  readonly rejections: ReadonlyArray<Rejection>
}

/**
 * Probes `candidates` in order and stops at the first that can run the worker, remembering it
 * (so a later {@link resolvePython} with the same candidates does not probe again).
 */
export const tryCandidates = (
  candidates: ReadonlyArray<string>,
  modules: ReadonlyArray<string> = GRPC_MODULES
): Effect.Effect<Resolution, never, CommandExecutor> =>
  Effect.gen(function* () {
    const rejections: Array<Rejection> = []
    for (const python of candidates) {
      const rejection = yield* probePython(python, modules)
      if (Option.isNone(rejection)) {
        resolved.set([...modules, ...candidates].join("\0"), python)
        return { chosen: Option.some(python), rejections }
      }
      rejections.push(rejection.value)
    }
    return { chosen: Option.none(), rejections }
  })

/**
 * The interpreter to run workers with: `explicit` if given, else `SNAKEPIT_PYTHON`, else the
 * first of {@link DEFAULT_CANDIDATES} that can import grpc. Fails with every rejection when
 * none can. Successful resolutions are remembered for the life of the process.
 */
export const resolvePython = (
  explicit: string | undefined,
  modules: ReadonlyArray<string> = GRPC_MODULES
): Effect.Effect<string, ReadonlyArray<Rejection>, CommandExecutor> =>
  Effect.gen(function* () {
    const { candidates } = yield* pythonCandidates(explicit)
    const known = resolved.get([...modules, ...candidates].join("\0"))
    if (known) return known
    const { chosen, rejections } = yield* tryCandidates(candidates, modules)
    return Option.isSome(chosen) ? chosen.value : yield* Effect.fail(rejections)
  })

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
