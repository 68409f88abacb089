/**
 * `snakepit codegen` against a real worker of a fixture adapter that uses every annotation it
 * maps: the generated module compiles with `tsc --strict` (and a typo in an argument name does
 * not), calls through it are typed and decoded at run time, and `--check` fails on a stale file.
 */
import { execFileSync } from "node:child_process"
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { Venv } from "@snakepit/testkit"
import { Effect } from "effect"
import { runCli } from "./helpers.js"

const root = fileURLToPath(new URL("../../..", import.meta.url))
const adapters = fileURLToPath(new URL("./fixtures/adapters", import.meta.url))
const dataVenv = Venv.withPackages({
  dir: join(root, ".venv-data"),
  packages: ["numpy", "pandas", "pyarrow", "pydantic"],
  imports: ["numpy", "pandas", "pyarrow", "pydantic"],
  shareModulesOf: Venv.suitePython()
})
if (dataVenv._tag === "Unavailable") console.warn(`Codegen.test.ts: SKIPPED: ${dataVenv.reason}`)

/** A directory inside the repository (git-ignored tmp/), so that the module resolves @snakepit/core and effect. */
const workDir = Effect.acquireRelease(
  Effect.sync(() => {
    mkdirSync(join(root, "tmp"), { recursive: true })
    return mkdtempSync(join(root, "tmp", "codegen-"))
  }),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

const tsc = (dir: string, files: ReadonlyArray<string>) => {
  try {
    execFileSync(
      join(root, "node_modules", ".bin", "tsc"),
      [
        "--noEmit",
        "--strict",
        "--module",
        "nodenext",
        "--moduleResolution",
        "nodenext",
        "--target",
        "es2022",
        "--skipLibCheck",
        ...files.map((f) => join(dir, f))
      ],
      { cwd: root, encoding: "utf8", timeout: 120_000 }
    )
    return ""
  } catch (error) {
    return String((error as { stdout?: string }).stdout ?? error)
  }
}

const USE = `import { Effect, Stream } from "effect"
import { Typed } from "./typed.js"
export const program = Effect.gen(function* () {
  const typed = yield* Typed
  const point = yield* typed.shapes({ point: { x: 1, y: 2 }, pair: { left: 1, right: "a" } })
  const x: number = point.x
  const label: string | undefined = point.label
  const mode: "ok" = yield* typed.choose({ mode: "fast" })
  const when: Date = yield* typed.when({ at: new Date() })
  const points = yield* Stream.runCollect(typed.count({ n: 2 }))
  return { x, label, mode, when, points }
})
`

describe.skipIf(dataVenv._tag !== "Ready")("snakepit codegen", () => {
  const python = dataVenv._tag === "Ready" ? dataVenv.python : ""
  it.scoped(
    "writes a module that compiles with tsc --strict, rejects typos, and --check fails when stale",
    () =>
      Effect.gen(function* () {
        const dir = yield* workDir
        const out = join(dir, "typed.ts")
        const args = ["--adapter", "typed_adapter:Typed", "--python-path", adapters, "--python", python, "--out", out]
        const written = yield* runCli("codegen", ...args)
        expect(written.code, written.stderr).toBe(0)
        const source = readFileSync(out, "utf8")
        // Every annotation of the fixture, mapped (and the one that cannot be, left unknown with why).
        for (const expected of [
          "n: Schema.Int",
          "x: Schema.Number",
          "raw: Schema.Uint8ArrayFromSelf",
          "nothing: Schema.optional(Schema.Null)",
          "items: Schema.Array(Schema.Int)",
          "table: Schema.Record({ key: Schema.String, value: Schema.Number })",
          "pair: Schema.Tuple(Schema.Int, Schema.String)",
          "maybe: Schema.optional(Schema.NullOr(Schema.String))",
          'mode: Schema.Literal("fast", "slow")',
          "verbose: Schema.optional(Schema.Boolean)",
          "export const Point = Schema.Struct",
          "export const Pair = Schema.Struct",
          "score: Schema.optional(Schema.NullOr(Schema.Number))",
          "values: NDArrayFromSelf",
          "at: Schema.DateFromSelf",
          "other: Schema.Unknown /* complex: no mapping for this annotation */",
          "streaming: true"
        ]) {
          expect(source).toContain(expected)
        }
        writeFileSync(join(dir, "use.ts"), USE)
        expect(tsc(dir, ["typed.ts", "use.ts"])).toBe("")
        writeFileSync(join(dir, "typo.ts"), USE.replace('{ mode: "fast" }', '{ mod: "fast" }'))
        expect(tsc(dir, ["typed.ts", "typo.ts"])).toContain("'mod' does not exist")

        const fresh = yield* runCli("codegen", ...args, "--check")
        expect(fresh.code, fresh.stderr).toBe(0)
        writeFileSync(out, source.replace("n: Schema.Int", "n: Schema.Number"))
        const stale = yield* runCli("codegen", ...args, "--check")
        expect(stale.code).toBe(1)
        expect(stale.stderr).toContain("is stale")
      }),
    240_000
  )
})
