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

/**
 * What {@link withPackages} gives: the venv's interpreter, or why there is none (the test then
 * skips, saying so).
 *
 * @since 0.3.0
 * @category models
 */
export type PackagesVenv =
  | { readonly _tag: "Ready"; readonly python: string }
  | { readonly _tag: "Unavailable"; readonly reason: string }

/**
 * A venv in `dir` (a git-ignored directory of the repository: it is kept between runs) with
 * `packages` installed by pip from the package index pip is configured for, made once: later
 * calls only check that it imports `imports`. Never installs into a user site. When the index
 * cannot be reached, `Unavailable` says why. `shareModulesOf` lends it another interpreter's
 * site-packages (after its own), for grpcio and protobuf. Synchronous, for `describe.skipIf`.
 *
 * @since 0.3.0
 * @category constructors
 */
export const withPackages = (options: {
  readonly dir: string
  readonly packages: ReadonlyArray<string>
  readonly imports: ReadonlyArray<string>
  readonly shareModulesOf?: string
  readonly base?: string
}): PackagesVenv => {
  const venvPython = join(options.dir, "bin", "python")
  const imports = (): boolean => {
    try {
      execFileSync(venvPython, ["-c", `import ${options.imports.join(", ")}`], { stdio: "ignore", timeout: 60_000 })
      return true
    } catch {
      return false
    }
  }
  const share = () => {
    if (options.shareModulesOf === undefined) return
    writeFileSync(
      join(sitePackagesOf(venvPython), "snakepit_test_shared.pth"),
      `${sitePackagesOf(options.shareModulesOf)}\n`
    )
  }
  try {
    if (imports()) {
      share()
      return { _tag: "Ready", python: venvPython }
    }
    rmSync(options.dir, { recursive: true, force: true })
    execFileSync(options.base ?? baseOf(suitePython()), ["-m", "venv", options.dir], {
      stdio: "ignore",
      timeout: 120_000
    })
    execFileSync(
      venvPython,
      [
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--retries",
        "0",
        "--timeout",
        "10",
        ...options.packages
      ],
      // A user-level `user = true` pip setting would refuse to install into a venv.
      { stdio: ["ignore", "ignore", "pipe"], timeout: 900_000, env: { ...process.env, PIP_USER: "0" } }
    )
  } catch (error) {
    rmSync(options.dir, { recursive: true, force: true })
    const stderr = (error as { stderr?: Buffer }).stderr?.toString().trim().split("\n").slice(-3).join(" ") ?? ""
    return {
      _tag: "Unavailable",
      reason: `cannot install ${options.packages.join(" ")} from the package index: ${stderr || String(error)}`
    }
  }
  if (!imports())
    return { _tag: "Unavailable", reason: `${venvPython} still cannot import ${options.imports.join(", ")}` }
  share()
  return { _tag: "Ready", python: venvPython }
}
