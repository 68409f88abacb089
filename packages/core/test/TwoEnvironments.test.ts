/**
 * Per-pool `python`: two pools in one layer, each in its own virtualenv, as an application with
 * a torch environment and a light one would run them. Both venvs are real, made for the test
 * from the suite interpreter's base; both see the suite's grpcio through a .pth file (a worker
 * needs it), and only one has the module `only_in_vision` in its own site-packages.
 */
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { Fixtures, Venv } from "@snakepit/testkit"
import { Effect, Schema } from "effect"

const fixtures = fileURLToPath(new URL("./fixtures/python", import.meta.url))

const Where = Schema.Struct({ prefix: Schema.String, executable: Schema.String, flavour: Schema.NullOr(Schema.String) })

/** argv[0] of a live process: the program the OS exec'd for it. */
const argv0 = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0]

describe("two pools, two Python environments", () => {
  it.scoped("each pool's workers run their own venv's interpreter and see only its modules", () =>
    Effect.gen(function* () {
      const suite = Venv.suitePython()
      const vision = yield* Venv.make({ shareModulesOf: suite, modules: { only_in_vision: 'FLAVOUR = "vision"\n' } })
      const text = yield* Venv.make({ shareModulesOf: suite })
      const adapter = { adapter: "where_am_i:WhereAmI", pythonPath: [fixtures] }

      yield* Fixtures.withPool(
        (pool) =>
          Effect.gen(function* () {
            for (const [name, venv, flavour] of [
              ["vision", vision, "vision"],
              ["text", text, null]
            ] as const) {
              const workers = yield* pool.workers(name)
              expect(workers).toHaveLength(2)
              for (const worker of workers) expect(argv0(worker.pid)).toBe(venv.python)
              // Two concurrent calls: one per worker of the pool.
              const answers = yield* Effect.all(
                [1, 2].map(() =>
                  pool.execute("where", {}, { pool: name }).pipe(Effect.flatMap(Schema.decodeUnknown(Where)))
                ),
                { concurrency: "unbounded" }
              )
              for (const answer of answers) {
                expect(answer).toEqual({ prefix: venv.prefix, executable: venv.python, flavour })
              }
            }
          }),
        {
          pools: {
            vision: { size: 2, python: vision.python, ...adapter },
            text: { size: 2, python: text.python, ...adapter }
          }
        }
      )
    })
  )
})
