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

const PROBE = "import grpc, google.protobuf, sys; print(sys.version.split()[0])"

/** Why each tried interpreter was rejected. */
export interface Rejection {
  readonly python: string
  readonly why: string
}

const probe = (python: string): Effect.Effect<Option.Option<Rejection>, never, CommandExecutor> =>
  Command.make(python, "-c", PROBE).pipe(
    Command.env({ PYTHONDONTWRITEBYTECODE: "1" }),
    Command.exitCode,
    Effect.timeout(Duration.seconds(20)),
    Effect.map((code) =>
      code === 0 ? Option.none() : Option.some({ python, why: "cannot import grpc and protobuf" })
    ),
    Effect.catchTags({
      SystemError: (e) =>
        Effect.succeed(Option.some({ python, why: e.reason === "NotFound" ? "not found" : e.message })),
      BadArgument: (e) => Effect.succeed(Option.some({ python, why: e.message })),
      TimeoutException: () => Effect.succeed(Option.some({ python, why: "did not answer within 20 s" }))
    })
  )

const resolved = new Map<string, string>()

/**
 * The interpreter to run workers with: `explicit` if given, else `SNAKEPIT_PYTHON`, else the
 * first of {@link DEFAULT_CANDIDATES} that can import grpc. Fails with every rejection when
 * none can. Successful resolutions are remembered for the life of the process.
 */
export const resolvePython = (
  explicit: string | undefined
): Effect.Effect<string, ReadonlyArray<Rejection>, CommandExecutor> =>
  Effect.gen(function* () {
    const fromEnv = yield* Config.option(Config.nonEmptyString("SNAKEPIT_PYTHON")).pipe(Effect.orDie)
    const candidates = explicit ? [explicit] : Option.isSome(fromEnv) ? [fromEnv.value] : DEFAULT_CANDIDATES
    const key = candidates.join("\0")
    const known = resolved.get(key)
    if (known) return known
    const rejections: Array<Rejection> = []
    for (const python of candidates) {
      const rejection = yield* probe(python)
      if (Option.isNone(rejection)) {
        resolved.set(key, python)
        return python
      }
      rejections.push(rejection.value)
    }
    return yield* Effect.fail(rejections)
  })

/**
 * The directory holding the `snakepit_bridge` package: shipped inside this package as
 * `python/` by the build, or the repository's `python/` when running from source.
 */
export const bridgePythonPath = (): string => {
  const here = dirname(fileURLToPath(import.meta.url))
  const candidates = [join(here, "..", "..", "python"), join(here, "..", "..", "..", "..", "python")]
  const found = candidates.find((dir) => existsSync(join(dir, "snakepit_bridge", "server.py")))
  if (!found) throw new Error(`snakepit_bridge runtime not found; looked in ${candidates.join(", ")}`)
  return found
}
