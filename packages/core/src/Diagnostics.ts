/**
 * What a diagnostics tool (`snakepit doctor`) needs to see of the core without starting a
 * pool: the interpreter search exactly as workers do it, with every candidate's reason for
 * rejection and the chosen one's versions; where the worker runtime is; and the options the
 * pool would resolve from the environment.
 *
 * Nothing here changes how workers start: {@link diagnosePython} walks the same candidates with
 * the same probe as `Worker.make`, and a successful diagnosis is remembered like a resolution.
 *
 * @since 0.1.0
 */
import { Command } from "@effect/platform"
import type { CommandExecutor } from "@effect/platform/CommandExecutor"
import { Duration, Effect, Option, Schema } from "effect"
import type { ConfigError } from "./errors.js"
import { resolveSnakepitOptions } from "./internal/config.js"
import {
  bridgeRuntimeCandidates,
  type CandidateSource,
  DEFAULT_CANDIDATES,
  findBridgeRuntime,
  pythonCandidates,
  tryCandidates
} from "./internal/python.js"
import type { ResolvedPoolOptions, SnakepitOptions } from "./PoolOptions.js"

export { type CandidateSource, DEFAULT_CANDIDATES }

/** What an interpreter says about itself; any field may be missing when it could not be asked. */
export interface InterpreterInfo {
  /** `sys.version`'s first word, e.g. "3.11.2". */
  readonly version: string | undefined
  /** `sys.executable`: the interpreter a name like `python3` resolved to. */
  readonly executable: string | undefined
  /** `grpc.__version__`, when grpc imports. */
  readonly grpcio: string | undefined
  /** `google.protobuf.__version__`, when protobuf imports. */
  readonly protobuf: string | undefined
  /** The imports that failed, as `module: ExceptionType: message`. */
  readonly importErrors: ReadonlyArray<string>
}

/** One candidate the search tried. */
export interface TriedInterpreter extends InterpreterInfo {
  /** The candidate as configured (a name on PATH or a path). */
  readonly python: string
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
  /** The candidates actually tried: every rejected one up to the chosen one, or all when none is usable. */
  readonly tried: ReadonlyArray<TriedInterpreter>
  /** The interpreter workers will run with, if any. */
  readonly chosen: string | undefined
}

// Python 2 syntax-safe on purpose: `python` may still be a Python 2 on old systems.
const INFO_SCRIPT = `import json, sys
info = {"version": sys.version.split()[0], "executable": sys.executable, "errors": []}
for key, name in (("grpcio", "grpc"), ("protobuf", "google.protobuf")):
    try:
        module = __import__(name, fromlist=["__version__"])
        info[key] = str(getattr(module, "__version__", "unknown"))
    except Exception as error:
        info["errors"].append(name + ": " + type(error).__name__ + ": " + str(error))
print(json.dumps(info))
`

const InfoJson = Schema.parseJson(
  Schema.Struct({
    version: Schema.String,
    executable: Schema.String,
    grpcio: Schema.optional(Schema.String),
    protobuf: Schema.optional(Schema.String),
    errors: Schema.Array(Schema.String)
  })
)

const unknownInfo: InterpreterInfo = {
  version: undefined,
  executable: undefined,
  grpcio: undefined,
  protobuf: undefined,
  importErrors: []
}

/**
 * Asks `python` for its version, executable, and grpcio / protobuf versions (or why they do not
 * import). Never fails: what could not be learnt is left undefined.
 */
export const describeInterpreter = (python: string): Effect.Effect<InterpreterInfo, never, CommandExecutor> =>
  Command.make(python, "-c", INFO_SCRIPT).pipe(
    Command.env({ PYTHONDONTWRITEBYTECODE: "1" }),
    Command.string,
    Effect.timeout(Duration.seconds(20)),
    Effect.map((stdout) =>
      Option.match(Schema.decodeUnknownOption(InfoJson)(stdout.trim().split("\n").at(-1) ?? ""), {
        onNone: () => unknownInfo,
        onSome: (info): InterpreterInfo => ({
          version: info.version,
          executable: info.executable,
          grpcio: info.grpcio,
          protobuf: info.protobuf,
          importErrors: info.errors
        })
      })
    ),
    // The probe already says why such an interpreter cannot be used; here it just has no details.
    Effect.catchTags({
      SystemError: () => Effect.succeed(unknownInfo),
      BadArgument: () => Effect.succeed(unknownInfo),
      TimeoutException: () => Effect.succeed(unknownInfo)
    })
  )

/**
 * Runs the interpreter search exactly as a worker does (`explicit`, else `SNAKEPIT_PYTHON`, else
 * {@link DEFAULT_CANDIDATES}, the first that imports grpc and protobuf wins) and describes each
 * candidate it tried. Never fails: no usable interpreter is `chosen: undefined`.
 */
export const diagnosePython = (explicit?: string): Effect.Effect<PythonDiagnosis, never, CommandExecutor> =>
  Effect.gen(function* () {
    const { source, candidates } = yield* pythonCandidates(explicit)
    const { chosen, rejections } = yield* tryCandidates(candidates)
    const triedNames = [...rejections.map((r) => r.python), ...Option.toArray(chosen)]
    const tried = yield* Effect.forEach(triedNames, (python) =>
      Effect.map(
        describeInterpreter(python),
        (info): TriedInterpreter => ({
          ...info,
          python,
          accepted: Option.contains(chosen, python),
          rejection: rejections.find((r) => r.python === python)?.why
        })
      )
    )
    return { source, candidates, tried, chosen: Option.getOrUndefined(chosen) }
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
