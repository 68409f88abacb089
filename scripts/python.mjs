// The one place that decides which Python interpreter this repository's tooling uses: the test
// suite (vitest.config.ts), the demo, the benchmarks, the release smoke test and the dev CLI
// (`npm run snakepit`) all ask `workerPython()`; the set-up step (scripts/dev.mjs) makes it with
// `ensureVenv()`.
//
// The interpreter is a project-local virtualenv, `.venv` (git-ignored), made with
// `python3 -m venv` from the base interpreter the first working `python3` resolves to (never
// through a pyenv/asdf shim, which costs a shell script per process start). What
// python/requirements-dev.txt lists is installed into it from the package index this machine
// reaches. When no index is reachable, the venv is made from the system Python with
// `--system-site-packages` instead, and the system packages (Debian's python3-grpcio,
// python3-protobuf) are installed with apt-get as root or through a password-less sudo.
// Nothing is installed into a user site.
import { spawnSync } from "node:child_process"
import { createHash } from "node:crypto"
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

export const root = join(dirname(fileURLToPath(import.meta.url)), "..")
/** The project virtualenv. */
export const VENV = join(root, ".venv")
/** Its interpreter (POSIX layout: this project runs on Linux and macOS). */
export const VENV_PYTHON = join(VENV, "bin", "python")
/** What the venv gets from a package index: the worker runtime's needs and the Python checkers. */
export const REQUIREMENTS = join(root, "python", "requirements-dev.txt")
/** What the worker runtime (gRPC transport) imports. */
export const RUNTIME_MODULES = ["grpc", "google.protobuf"]
/** The Python checkers `npm test` runs (installed from the index only). */
export const CHECK_MODULES = ["mypy", "ruff"]
/** The oldest Python the worker runtime supports. */
export const MIN_PYTHON = [3, 10]

const STAMP = join(VENV, ".snakepit-setup.json")
const SYSTEM_PACKAGES = ["python3-grpcio", "python3-protobuf"]
const SYSTEM_PYTHON = "/usr/bin/python3"

const quiet = (cmd, args, { timeout = 120_000, env = process.env } = {}) =>
  spawnSync(cmd, args, { cwd: root, env, stdio: ["ignore", "pipe", "pipe"], timeout, encoding: "utf8" })

const tail = (text, lines = 15) => (text ?? "").trim().split("\n").slice(-lines).join("\n")

/**
 * The interpreter workers are started with by this repository's tooling: `SNAKEPIT_PYTHON` when
 * set (the operator's choice wins), else the project venv's once the set-up made it, else
 * undefined (the pool's own search decides).
 */
export const workerPython = () => {
  const fromEnv = process.env.SNAKEPIT_PYTHON?.trim()
  if (fromEnv) return fromEnv
  return existsSync(VENV_PYTHON) ? VENV_PYTHON : undefined
}

/** `process.env` with SNAKEPIT_PYTHON set to {@link workerPython} (unchanged when there is none). */
export const envWithPython = (env = process.env) => {
  const python = workerPython()
  return python === undefined ? { ...env } : { ...env, SNAKEPIT_PYTHON: python }
}

const DESCRIBE = `import json, sys
print(json.dumps({"executable": sys.executable, "base": getattr(sys, "_base_executable", sys.executable) or sys.executable, "version": list(sys.version_info[:3]), "prefix": sys.prefix}))`

/**
 * What `python` really is: `executable` (its `sys.executable`, past any shim), `base` (the
 * interpreter a venv was made from, else the same), `version`, `prefix`. Undefined when it does
 * not run.
 */
export const describePython = (python) => {
  const res = quiet(python, ["-c", DESCRIBE], { timeout: 30_000 })
  if (res.status !== 0) return undefined
  try {
    return JSON.parse(res.stdout.trim().split("\n").at(-1))
  } catch {
    return undefined
  }
}

/** `sys.executable` of `python`: the interpreter a shim or a name on PATH resolves to. */
export const resolveExecutable = (python) => describePython(python)?.executable || undefined

const importCheck = (python, modules) =>
  modules.length === 0 || quiet(python, ["-c", `import ${modules.join(", ")}`], { timeout: 30_000 }).status === 0

const supported = (info) =>
  info.version[0] > MIN_PYTHON[0] || (info.version[0] === MIN_PYTHON[0] && info.version[1] >= MIN_PYTHON[1])

/**
 * The base interpreter to make the venv from: the first of python3, /usr/bin/python3, python
 * that runs and is recent enough, as the executable it resolves to (a shim's target, a venv's
 * base), so the venv never points at a shim.
 */
const baseInterpreter = (candidates = ["python3", SYSTEM_PYTHON, "python"]) => {
  const tried = []
  for (const candidate of candidates) {
    const info = describePython(candidate)
    if (info === undefined) {
      tried.push(`${candidate}: does not run`)
      continue
    }
    if (!supported(info)) {
      tried.push(`${candidate}: Python ${info.version.join(".")} is older than ${MIN_PYTHON.join(".")}`)
      continue
    }
    return { command: candidate, executable: info.base, version: info.version.join(".") }
  }
  throw new Error(`no usable python3 on this machine (${tried.join("; ")}): install Python ${MIN_PYTHON.join(".")}+`)
}

const requirementsHash = () => createHash("sha256").update(readFileSync(REQUIREMENTS)).digest("hex").slice(0, 16)

const readStamp = () => {
  try {
    return JSON.parse(readFileSync(STAMP, "utf8"))
  } catch {
    return undefined
  }
}

/**
 * The venv as the last set-up left it, when it still works: its stamp matches the requirements
 * file, and its interpreter imports what the stamp promises. One Python start, no install.
 */
export const venvStatus = () => {
  const stamp = readStamp()
  if (stamp === undefined || !existsSync(VENV_PYTHON)) return undefined
  if (stamp.mode === "index" && stamp.requirements !== requirementsHash()) return undefined
  const modules = stamp.mode === "index" ? [...RUNTIME_MODULES, ...CHECK_MODULES] : RUNTIME_MODULES
  return importCheck(VENV_PYTHON, modules) ? stamp : undefined
}

const makeVenv = (base, extra, log) => {
  rmSync(VENV, { recursive: true, force: true })
  log(`making ${VENV} with ${base.executable} (Python ${base.version}${extra.length ? `, ${extra.join(" ")}` : ""})`)
  const res = quiet(base.executable, ["-m", "venv", ...extra, VENV], { timeout: 120_000 })
  if (res.status !== 0) {
    rmSync(VENV, { recursive: true, force: true })
    return `${base.executable} -m venv failed: ${tail(res.stderr || res.stdout, 5)}`
  }
  return undefined
}

/** From the package index pip is configured for (the machine's pip config and PIP_* variables). */
const installFromIndex = (base, log) => {
  const failed = makeVenv(base, [], log)
  if (failed) return failed
  log(`installing ${REQUIREMENTS.slice(root.length + 1)} into .venv from the package index`)
  const pip = quiet(
    VENV_PYTHON,
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
      "-r",
      REQUIREMENTS
    ],
    // A user-level `user = true` pip setting would refuse to install into a venv.
    { timeout: 600_000, env: { ...process.env, PIP_USER: "0" } }
  )
  if (pip.status !== 0) return `pip could not install from the package index:\n${tail(pip.stderr || pip.stdout)}`
  if (!importCheck(VENV_PYTHON, [...RUNTIME_MODULES, ...CHECK_MODULES])) {
    return `pip installed the requirements, but ${VENV_PYTHON} cannot import ${[...RUNTIME_MODULES, ...CHECK_MODULES].join(", ")}`
  }
  return undefined
}

/** apt-get as root, else through a sudo that needs no password; undefined when neither is possible. */
const aptGet = () => {
  if (quiet("apt-get", ["--version"]).status !== 0) return undefined
  if (process.getuid?.() === 0) return ["apt-get"]
  return quiet("sudo", ["-n", "true"]).status === 0 ? ["sudo", "-n", "apt-get"] : undefined
}

/** The system Python with the distribution's grpcio and protobuf, seen through a --system-site-packages venv. */
const installFromSystem = (log) => {
  const system = describePython(SYSTEM_PYTHON)
  if (system === undefined) return `${SYSTEM_PYTHON} does not run`
  if (!importCheck(SYSTEM_PYTHON, RUNTIME_MODULES)) {
    const apt = aptGet()
    if (apt === undefined) {
      return `${SYSTEM_PYTHON} cannot import ${RUNTIME_MODULES.join(", ")}, and apt-get cannot run as root here (no root, no password-less sudo)`
    }
    const [cmd, ...prefix] = apt
    log(`installing ${SYSTEM_PACKAGES.join(" ")} with ${apt.join(" ")}`)
    const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" }
    const update = quiet(cmd, [...prefix, "update", "-qq"], { timeout: 600_000, env })
    if (update.status !== 0) return `${apt.join(" ")} update failed:\n${tail(update.stderr || update.stdout)}`
    const install = quiet(cmd, [...prefix, "install", "-y", "-qq", ...SYSTEM_PACKAGES], { timeout: 600_000, env })
    if (install.status !== 0) return `${apt.join(" ")} install failed:\n${tail(install.stderr || install.stdout)}`
    if (!importCheck(SYSTEM_PYTHON, RUNTIME_MODULES)) {
      return `${apt.join(" ")} install ${SYSTEM_PACKAGES.join(" ")} succeeded, but ${SYSTEM_PYTHON} still cannot import ${RUNTIME_MODULES.join(", ")}`
    }
  }
  // Without pip: nothing is installed into this venv, and Debian's python3 may lack ensurepip.
  const base = { executable: system.base, version: system.version.join(".") }
  const failed = makeVenv(base, ["--system-site-packages", "--without-pip"], log)
  if (failed) return failed
  return importCheck(VENV_PYTHON, RUNTIME_MODULES)
    ? undefined
    : `${VENV_PYTHON} (with system site packages) cannot import ${RUNTIME_MODULES.join(", ")}`
}

/**
 * Makes sure `.venv` exists and works, and returns `{ python, mode, checks }`: the venv's
 * interpreter, how it was provisioned (`index` or `system`), and whether the Python checkers
 * (mypy, ruff) are in it. Fast when the venv is already good: one import check, no install.
 * Throws, saying what was tried, when neither way works.
 */
export const ensureVenv = ({ log = () => {} } = {}) => {
  const good = venvStatus()
  if (good !== undefined) return { python: VENV_PYTHON, mode: good.mode, checks: good.mode === "index" }
  const base = baseInterpreter()
  const fromIndex = installFromIndex(base, log)
  let mode = "index"
  if (fromIndex !== undefined) {
    log(fromIndex)
    log("falling back to the system packages")
    const fromSystem = installFromSystem(log)
    if (fromSystem !== undefined) {
      rmSync(VENV, { recursive: true, force: true })
      throw new Error(
        `could not provision ${VENV}:\n- from the package index: ${fromIndex}\n- from the system packages: ${fromSystem}\n` +
          `Make the package index reachable (pip config, PIP_INDEX_URL), or install ${SYSTEM_PACKAGES.join(" ")} (Debian/Ubuntu), then run this again.`
      )
    }
    mode = "system"
  }
  const stamp = {
    mode,
    requirements: mode === "index" ? requirementsHash() : null,
    base: describePython(VENV_PYTHON)?.base
  }
  writeFileSync(STAMP, `${JSON.stringify(stamp, null, 2)}\n`)
  return { python: VENV_PYTHON, mode, checks: mode === "index" }
}
