/**
 * What a configured Python command really is: the interpreter it runs (`sys.executable`, past
 * any pyenv/asdf shim), its version, the kind of environment it lives in (venv, uv venv, conda,
 * system), and which of the modules the worker runtime needs it can import. And, when some are
 * missing, the exact command that installs them into THAT environment.
 *
 * Workers are spawned with {@link PythonEnvironment.executable}, never with the command as
 * configured: a shim is a shell script that costs a few hundred milliseconds per process start.
 *
 * @since 0.1.0
 */
import { realpathSync, statSync } from "node:fs"
import { delimiter, isAbsolute, join, resolve } from "node:path"
import { Command } from "@effect/platform"
import type { CommandExecutor } from "@effect/platform/CommandExecutor"
import { Duration, Effect, Either, Schema } from "effect"

/**
 * The modules the worker runtime imports over the gRPC transport: what an interpreter is
 * checked for unless told otherwise.
 *
 * @since 0.1.0
 * @category constants
 */
export const DEFAULT_REQUIRED_MODULES: ReadonlyArray<string> = ["grpc", "google.protobuf"]

/**
 * Where an interpreter lives: a `venv` (made by `python -m venv` or virtualenv), a `uv` venv
 * (made by `uv venv`), a `conda` environment, or a `system` interpreter (the distribution's, a
 * pyenv or python.org install).
 *
 * @since 0.1.0
 * @category models
 */
export type Kind = "venv" | "uv" | "conda" | "system"

/**
 * One required module, as the interpreter imported it.
 *
 * @since 0.1.0
 * @category models
 */
export interface ModuleStatus {
  /** The import name, e.g. `google.protobuf`. */
  readonly name: string
  /** Its `__version__` when it imported ("" when it has none); undefined when it did not import. */
  readonly version: string | undefined
  /** `ExceptionType: message` when it did not import. */
  readonly error: string | undefined
}

/**
 * A configured Python command, resolved.
 *
 * @since 0.1.0
 * @category models
 */
export interface PythonEnvironment {
  /** The command as configured: a name on PATH or a path. */
  readonly command: string
  /** Its `sys.executable`: what workers are spawned with. */
  readonly executable: string
  /** `sys.version`'s first word, e.g. "3.11.7". */
  readonly version: string
  readonly kind: Kind
  /** `sys.prefix`: the environment's directory. */
  readonly prefix: string
  /** True when the command is not the interpreter itself but resolves to another program (a pyenv/asdf shim, a wrapper script). */
  readonly shim: boolean
  /** Each required module, in the order asked. */
  readonly modules: ReadonlyArray<ModuleStatus>
  /** The required modules that did not import. */
  readonly missing: ReadonlyArray<string>
  /** The interpreter's standard library carries an EXTERNALLY-MANAGED marker (PEP 668): pip refuses to install into it. */
  readonly externallyManaged: boolean
  /** Debian/Ubuntu's own Python (under /usr/bin on a Debian-family system): apt installs its packages. */
  readonly debianSystem: boolean
  /** `pip` is importable in it. */
  readonly hasPip: boolean
}

/**
 * Why a command could not be inspected at all (it is not there, not executable, or did not
 * answer).
 *
 * @since 0.1.0
 * @category models
 */
export interface NotRunnable {
  readonly command: string
  readonly why: string
  /** Set when the host itself ran out of something (EMFILE, ENFILE, EAGAIN, ENOMEM): not the interpreter's fault. */
  readonly exhausted?: string | undefined
}

const EXHAUSTED = /\b(EMFILE|ENFILE|EAGAIN|ENOMEM)\b/

/** The host's own resource failure in a spawn error, if that is what it is. */
const exhaustion = (error: { readonly message: string; readonly cause?: unknown }): string | undefined =>
  EXHAUSTED.exec(
    `${error.message} ${String((error.cause as { code?: unknown } | undefined)?.code ?? error.cause ?? "")}`
  )?.[1]

// Prints one JSON line. Kept to syntax that even an old interpreter parses, so that a
// too-old `python` is reported by its version rather than by a SyntaxError. The working
// directory goes to the end of sys.path first, as for a worker: a grpc.py or json.py there must
// not answer for the real modules.
const PROBE = `import sys
p = sys.path
(p and p[0] in ("", ".")) and p.append(p.pop(0))
import json, os
info = {"executable": sys.executable, "version": sys.version.split()[0], "prefix": sys.prefix,
        "basePrefix": getattr(sys, "base_prefix", sys.prefix), "modules": [], "uv": False}
cfg = os.path.join(sys.prefix, "pyvenv.cfg")
if info["prefix"] != info["basePrefix"] and os.path.isfile(cfg):
    try:
        with open(cfg) as f:
            info["uv"] = any(line.split("=")[0].strip() == "uv" for line in f)
    except Exception:
        pass
info["conda"] = os.path.isdir(os.path.join(sys.prefix, "conda-meta"))
try:
    import sysconfig
    info["externallyManaged"] = os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
except Exception:
    info["externallyManaged"] = False
info["debian"] = os.path.isfile("/etc/debian_version")
try:
    import importlib.util
    info["pip"] = importlib.util.find_spec("pip") is not None
except Exception:
    info["pip"] = False
for name in sys.argv[1:]:
    try:
        module = __import__(name, fromlist=["__version__"])
        info["modules"].append({"name": name, "version": str(getattr(module, "__version__", ""))})
    except Exception as error:
        info["modules"].append({"name": name, "error": type(error).__name__ + ": " + str(error)})
print(json.dumps(info))
`

const ProbeJson = Schema.parseJson(
  Schema.Struct({
    executable: Schema.String,
    version: Schema.String,
    prefix: Schema.String,
    basePrefix: Schema.String,
    uv: Schema.Boolean,
    conda: Schema.Boolean,
    externallyManaged: Schema.Boolean,
    debian: Schema.Boolean,
    pip: Schema.Boolean,
    modules: Schema.Array(
      Schema.Struct({
        name: Schema.String,
        version: Schema.optional(Schema.String),
        error: Schema.optional(Schema.String)
      })
    )
  })
)

const PROBE_TIMEOUT = Duration.seconds(20)

const isFile = (path: string): boolean => {
  try {
    return statSync(path).isFile()
  } catch {
    return false
  }
}

/** The file `command` runs, as the OS finds it (PATH for a bare name), with symlinks resolved. */
const commandTarget = (command: string): string | undefined => {
  const found = command.includes("/")
    ? resolve(command)
    : (process.env.PATH ?? "")
        .split(delimiter)
        .filter((dir) => dir !== "" && isAbsolute(dir))
        .map((dir) => join(dir, command))
        .find(isFile)
  if (found === undefined) return undefined
  try {
    return realpathSync(found)
  } catch {
    return undefined
  }
}

const sameFile = (a: string | undefined, b: string): boolean => {
  if (a === undefined) return true // unknown: do not call it a shim
  try {
    return a === realpathSync(b)
  } catch {
    return true
  }
}

/**
 * Runs `command` once and describes it, importing each of `modules`. Fails with
 * {@link NotRunnable} when the command cannot be run or does not answer in 20 seconds.
 *
 * @since 0.1.0
 * @category constructors
 */
export const inspect = (
  command: string,
  modules: ReadonlyArray<string> = DEFAULT_REQUIRED_MODULES
): Effect.Effect<PythonEnvironment, NotRunnable, CommandExecutor> =>
  Command.make(command, "-c", PROBE, ...modules).pipe(
    Command.env({ PYTHONDONTWRITEBYTECODE: "1" }),
    Command.string,
    Effect.timeout(PROBE_TIMEOUT),
    Effect.catchTags({
      SystemError: (e) =>
        Effect.fail<NotRunnable>({
          command,
          why: e.reason === "NotFound" ? "not found" : e.message,
          exhausted: exhaustion(e)
        }),
      BadArgument: (e) => Effect.fail<NotRunnable>({ command, why: e.message }),
      TimeoutException: () =>
        Effect.fail<NotRunnable>({ command, why: `did not answer within ${Duration.format(PROBE_TIMEOUT)}` })
    }),
    Effect.flatMap((stdout) =>
      Either.match(Schema.decodeUnknownEither(ProbeJson)(stdout.trim().split("\n").at(-1) ?? ""), {
        onLeft: () =>
          Effect.fail<NotRunnable>({
            command,
            why: "is not a Python this can use (it did not describe itself; Python 3 is required)"
          }),
        onRight: (info) => Effect.succeed(fromProbe(command, info))
      })
    )
  )

const fromProbe = (command: string, info: typeof ProbeJson.Type): PythonEnvironment => {
  const executable = info.executable === "" ? command : info.executable
  const isVenv = info.prefix !== info.basePrefix
  const kind: Kind = isVenv ? (info.uv ? "uv" : "venv") : info.conda ? "conda" : "system"
  const modules = info.modules.map(
    (m): ModuleStatus => ({
      name: m.name,
      version: m.error === undefined ? (m.version ?? "") : undefined,
      error: m.error
    })
  )
  const real = commandTarget(executable)
  return {
    command,
    executable,
    version: info.version,
    kind,
    prefix: info.prefix,
    shim: !sameFile(commandTarget(command), executable),
    modules,
    missing: modules.filter((m) => m.error !== undefined).map((m) => m.name),
    externallyManaged: info.externallyManaged,
    debianSystem: kind === "system" && info.debian && (real ?? executable).startsWith("/usr/bin/"),
    hasPip: info.pip
  }
}

// ---------------------------------------------------------------------------------------------
// Install hints
// ---------------------------------------------------------------------------------------------

// Import names whose distribution is named otherwise (the common ones in ML code).
const PIP_NAMES: Readonly<Record<string, string>> = {
  grpc: "grpcio",
  google: "protobuf",
  sklearn: "scikit-learn",
  skimage: "scikit-image",
  cv2: "opencv-python",
  PIL: "pillow",
  yaml: "pyyaml",
  bs4: "beautifulsoup4"
}
const APT_NAMES: Readonly<Record<string, string>> = {
  grpc: "python3-grpcio",
  google: "python3-protobuf",
  cv2: "python3-opencv",
  PIL: "python3-pil"
}

const topLevel = (module: string) => module.split(".")[0] ?? module

/**
 * The distribution name pip installs `module` from: `grpc` → `grpcio`, `google.protobuf` →
 * `protobuf`, `sklearn` → `scikit-learn` and a few more; otherwise its top-level package name,
 * which is right for most packages.
 *
 * @since 0.1.0
 * @category install hints
 */
export const pipPackage = (module: string): string => PIP_NAMES[topLevel(module)] ?? topLevel(module)

const aptPackage = (module: string): string =>
  APT_NAMES[topLevel(module)] ?? `python3-${topLevel(module).toLowerCase()}`

/** A path or word as a POSIX shell reads it back. */
const quote = (value: string): string =>
  /^[\w@%+=:,./-]+$/.test(value) ? value : `'${value.replaceAll("'", "'\\''")}'`

const list = (items: ReadonlyArray<string>): string =>
  items.length <= 1 ? (items[0] ?? "") : `${items.slice(0, -1).join(", ")} and ${items.at(-1)}`

/**
 * The shell command that installs `modules` (default: the missing ones) into `environment`,
 * for its kind: `<exe> -m pip install ...` for a venv or a pip-managed interpreter, `uv pip
 * install --python <exe> ...` for a uv venv, `conda install -p <prefix> ...` for conda, `apt-get
 * install python3-...` for Debian's own Python. Undefined for an externally managed interpreter
 * that is not Debian's (make a venv: {@link installHint} says how).
 *
 * @since 0.1.0
 * @category install hints
 */
export const installCommand = (
  environment: PythonEnvironment,
  modules: ReadonlyArray<string> = environment.missing
): string | undefined => {
  const pip = modules.map(pipPackage).join(" ")
  const exe = quote(environment.executable)
  switch (environment.kind) {
    case "uv":
      return `uv pip install --python ${exe} ${pip}`
    case "venv":
      return environment.hasPip ? `${exe} -m pip install ${pip}` : `${exe} -m ensurepip && ${exe} -m pip install ${pip}`
    case "conda":
      return `conda install -p ${quote(environment.prefix)} -c conda-forge ${pip}`
    case "system":
      if (environment.debianSystem) return `apt-get install ${modules.map(aptPackage).join(" ")}`
      return environment.externallyManaged ? undefined : `${exe} -m pip install ${pip}`
  }
}

/**
 * What to do so that `environment` can import `modules` (default: the missing ones), as one
 * sentence with the exact command for that environment, e.g. "install grpcio and protobuf into
 * the venv at /app/.venv: `/app/.venv/bin/python -m pip install grpcio protobuf`". The same
 * text is in `WorkerStartError` (`python_not_found`) and in `snakepit doctor`.
 *
 * @since 0.1.0
 * @category install hints
 */
export const installHint = (
  environment: PythonEnvironment,
  modules: ReadonlyArray<string> = environment.missing
): string => {
  const packages = list(modules.map(pipPackage))
  const command = installCommand(environment, modules)
  const venv = `make a venv for your application and use it: \`${quote(environment.executable)} -m venv .venv && .venv/bin/python -m pip install ${modules.map(pipPackage).join(" ")}\`, then set SNAKEPIT_PYTHON (or the \`python\` option) to .venv/bin/python`
  switch (environment.kind) {
    case "uv":
      return `install ${packages} into the uv venv at ${environment.prefix}: \`${command}\``
    case "venv":
      return `install ${packages} into the venv at ${environment.prefix}: \`${command}\``
    case "conda":
      return `install ${packages} into the conda environment at ${environment.prefix}: \`${command}\` (or \`${quote(environment.executable)} -m pip install ${modules.map(pipPackage).join(" ")}\`)`
    case "system":
      if (environment.debianSystem) {
        return `${environment.executable} is Debian's system Python: install the distribution's packages as root, \`${command}\`, or (with python3-venv installed) ${venv}`
      }
      return command === undefined
        ? `${environment.executable} is externally managed (pip refuses to install into it): ${venv}`
        : `install ${packages} for ${environment.executable}: \`${command}\` (or ${venv})`
  }
}

/**
 * One line about `environment`: "python3 → /root/.pyenv/versions/3.11.7/bin/python3 (a shim):
 * Python 3.11.7, system". Names the resolved interpreter whenever it differs from the command.
 *
 * @since 0.1.0
 * @category formatting
 */
export const describe = (environment: PythonEnvironment): string => {
  const target =
    environment.executable === environment.command
      ? environment.command
      : `${environment.command} → ${environment.executable}${environment.shim ? " (a shim)" : ""}`
  const where = environment.kind === "system" ? "system" : `${environment.kind} at ${environment.prefix}`
  return `${target}: Python ${environment.version}, ${where}`
}

/**
 * Why `environment` cannot run the worker, in a clause: "cannot import grpc (ModuleNotFoundError:
 * No module named 'grpc'), google.protobuf (...)". Empty when nothing is missing.
 *
 * @since 0.1.0
 * @category formatting
 */
export const describeMissing = (environment: PythonEnvironment): string => {
  const failed = environment.modules.filter((m) => m.error !== undefined)
  return failed.length === 0 ? "" : `cannot import ${failed.map((m) => `${m.name} (${m.error})`).join(", ")}`
}
