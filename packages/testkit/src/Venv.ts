/**
 * Real Python virtualenvs for tests of interpreter resolution: made with `python -m venv` in a
 * temporary directory (removed when the scope closes), from the base interpreter of the one the
 * suite's workers use (`SNAKEPIT_PYTHON`, which the repository's vitest config sets to the project
 * venv), so that no shim is involved.
 *
 * A fresh venv has no grpcio, so it cannot run a worker of the gRPC transport; `shareModulesOf`
 * lends it the suite interpreter's site-packages through a `.pth` file, so it can, while its
 * `sys.prefix` and `sys.executable` stay its own.
 *
 * @since 0.1.0
 */
import { execFileSync } from "node:child_process"
import { appendFileSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect, type Scope } from "effect"

/**
 * A virtualenv made for a test.
 *
 * @since 0.1.0
 * @category models
 */
export interface Venv {
  /** Its interpreter, `<prefix>/bin/python`. */
  readonly python: string
  /** Its directory (`sys.prefix`). */
  readonly prefix: string
  /** Its `purelib` site-packages directory. */
  readonly sitePackages: string
}

/**
 * Options of {@link make}.
 *
 * @since 0.1.0
 * @category models
 */
export interface VenvOptions {
  /** Interpreter to make it with. Default: the base interpreter of {@link suitePython}. */
  readonly base?: string
  /** Let it see this interpreter's site-packages (a `.pth` file): its grpcio and protobuf, for a worker. */
  readonly shareModulesOf?: string
  /** Modules written into its own site-packages: `{ "only_here": "VALUE = 1\n" }` makes `import only_here` work. */
  readonly modules?: Readonly<Record<string, string>>
  /** Mark it as `uv venv` marks its venvs (a `uv = <version>` line in pyvenv.cfg). */
  readonly uvMarker?: boolean
}

const python = (interpreter: string, code: string): string =>
  execFileSync(interpreter, ["-c", code], { encoding: "utf8", timeout: 30_000 }).trim()

/**
 * The interpreter the suite's workers run: `SNAKEPIT_PYTHON` (the repository's vitest config
 * sets it to the project venv), else `python3`.
 *
 * @since 0.1.0
 * @category interpreters
 */
export const suitePython = (): string => process.env.SNAKEPIT_PYTHON?.trim() || "python3"

/**
 * The `purelib` site-packages directory of `interpreter`.
 *
 * @since 0.1.0
 * @category interpreters
 */
export const sitePackagesOf = (interpreter: string): string =>
  python(interpreter, "import sysconfig; print(sysconfig.get_paths()['purelib'])")

/**
 * The interpreter `interpreter` is, or was made from when it is a venv (past any shim).
 *
 * @since 0.1.0
 * @category interpreters
 */
export const baseOf = (interpreter: string): string =>
  python(interpreter, "import sys; print(getattr(sys, '_base_executable', '') or sys.executable)")

/**
 * A new virtualenv (without pip, which it does not need), in a temporary directory removed when
 * the scope closes.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: VenvOptions = {}): Effect.Effect<Venv, Error, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: () => realpathSync(mkdtempSync(join(tmpdir(), "snakepit-venv-"))),
      catch: (error) => new Error(`cannot make a temporary directory: ${error}`)
    }),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
  ).pipe(
    Effect.flatMap((dir) =>
      Effect.try({
        try: (): Venv => {
          const prefix = join(dir, "venv")
          const base = options.base ?? baseOf(suitePython())
          execFileSync(base, ["-m", "venv", "--without-pip", prefix], { stdio: "ignore", timeout: 60_000 })
          const venvPython = join(prefix, "bin", "python")
          const sitePackages = sitePackagesOf(venvPython)
          if (options.shareModulesOf !== undefined) {
            writeFileSync(join(sitePackages, "snakepit_test_shared.pth"), `${sitePackagesOf(options.shareModulesOf)}\n`)
          }
          for (const [name, source] of Object.entries(options.modules ?? {})) {
            writeFileSync(join(sitePackages, `${name}.py`), source)
          }
          if (options.uvMarker === true) appendFileSync(join(prefix, "pyvenv.cfg"), "uv = 0.5.0\n")
          return { python: venvPython, prefix, sitePackages }
        },
        catch: (error) => new Error(`cannot make a venv: ${error}`)
      })
    )
  )
