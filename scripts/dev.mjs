#!/usr/bin/env node
// The one entry point behind `npm run demo` and `npm test` on a fresh machine:
// installs what the project needs (pnpm, JS deps, Python deps), builds, then runs.
// Python: the project venv `.venv` that scripts/python.mjs makes and every tool here uses.
// Usage: node scripts/dev.mjs <setup|demo|test|test-python|check-python|snakepit [args...]>
import { spawnSync } from "node:child_process"
import { existsSync } from "node:fs"
import { join } from "node:path"
import { ensureVenv, envWithPython, root, workerPython } from "./python.mjs"

const PNPM_VERSION = "10.34.8"

const log = (msg) => console.error(`[snakepit] ${msg}`)

const run = (cmd, args, opts = {}) => {
  const res = spawnSync(cmd, args, { cwd: root, stdio: "inherit", ...opts })
  if (res.error) throw res.error
  if (res.status !== 0) {
    const err = new Error(`${cmd} ${args.join(" ")} exited with ${res.status ?? res.signal}`)
    err.exitCode = res.status ?? 1
    throw err
  }
}

const quiet = (cmd, args, timeout = 120_000) =>
  spawnSync(cmd, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"], timeout, encoding: "utf8" })

/** pnpm on PATH when it is the pinned major, else a project-local copy from the npm registry. */
const ensurePnpm = () => {
  const onPath = quiet("pnpm", ["--version"])
  if (onPath.status === 0 && onPath.stdout.trim().startsWith("10.")) return "pnpm"
  const local = join(root, ".tools", "node_modules", ".bin", "pnpm")
  if (!existsSync(local)) {
    log(`installing pnpm@${PNPM_VERSION} into .tools/`)
    run("npm", [
      "install",
      "--prefix",
      join(root, ".tools"),
      "--no-save",
      "--no-package-lock",
      "--no-audit",
      "--no-fund",
      `pnpm@${PNPM_VERSION}`
    ])
  }
  return local
}

const setup = () => {
  const pnpm = ensurePnpm()
  log("installing JS dependencies")
  run(pnpm, ["install", "--frozen-lockfile", "--reporter=append-only"])
  const venv = setupPython()
  log("building packages")
  run(pnpm, ["run", "-s", "build"], { env: envWithPython() })
  return { pnpm, venv }
}

/** The project venv, made or checked (fast when it is already good). */
const setupPython = () => {
  const venv = ensureVenv({ log })
  log(`Python: ${venv.python} (${venv.mode === "index" ? "from the package index" : "system packages"})`)
  const chosen = workerPython()
  if (chosen !== venv.python) log(`workers run ${chosen} (SNAKEPIT_PYTHON)`)
  return venv
}

const pythonEnv = () => ({ ...envWithPython(), PYTHONPATH: join(root, "python"), PYTHONDONTWRITEBYTECODE: "1" })

const testPython = () => {
  log("Python tests")
  run(workerPython(), ["-m", "unittest", "discover", "-s", "python/tests", "-t", "python", "-v"], {
    env: pythonEnv()
  })
}

/** mypy and ruff over python/ (configured in pyproject.toml), with the venv's checkers. */
const checkPython = (venv) => {
  if (!venv.checks) {
    log("mypy and ruff are not installed (no package index was reachable at set-up): Python checks SKIPPED")
    return
  }
  log("Python checks: ruff, mypy")
  run(venv.python, ["-m", "ruff", "check", "python"], { env: pythonEnv() })
  run(venv.python, ["-m", "mypy"], { env: pythonEnv() })
}

const main = () => {
  const [cmd] = process.argv.slice(2)
  switch (cmd) {
    case "setup":
      setup()
      return
    case "demo":
      setup()
      run(process.execPath, ["examples/demo.mjs"], { env: envWithPython() })
      return
    case "test-python":
      setupPython()
      testPython()
      return
    case "check-python":
      checkPython(setupPython())
      return
    case "snakepit": {
      // The dev CLI, with the interpreter the set-up chose (no set-up here: it must be quick).
      const bin = join(root, "packages", "cli", "dist", "bin.js")
      if (!existsSync(bin))
        throw new Error("packages/cli/dist is missing: run `npm run setup` (or `npm run build`) first")
      const res = spawnSync(process.execPath, [bin, ...process.argv.slice(3)], {
        stdio: "inherit",
        env: envWithPython()
      })
      if (res.error) throw res.error
      process.exitCode = res.status ?? 1
      return
    }
    case "test": {
      const { pnpm, venv } = setup()
      const env = envWithPython()
      log("type-check and lint")
      run(pnpm, ["run", "-s", "typecheck"])
      run(pnpm, ["run", "-s", "lint"])
      run(pnpm, ["run", "-s", "proto:check"])
      checkPython(venv)
      testPython()
      log("TypeScript tests")
      run(pnpm, ["exec", "vitest", "run"], { env })
      log("release smoke test")
      run(pnpm, ["run", "-s", "test:smoke"], { env })
      log("all checks passed")
      return
    }
    default:
      console.error("usage: node scripts/dev.mjs <setup|demo|test|test-python|check-python|snakepit [args...]>")
      process.exitCode = 2
  }
}

try {
  main()
} catch (err) {
  log(err.message)
  process.exitCode = err.exitCode ?? 1
}
