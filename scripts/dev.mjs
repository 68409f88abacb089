#!/usr/bin/env node
// The one entry point behind `npm run demo` and `npm test` on a fresh machine:
// installs what the project needs (pnpm, JS deps, Python deps), builds, then runs.
// Usage: node scripts/dev.mjs <setup|demo|test|test-python>
import { spawnSync } from "node:child_process"
import { existsSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const PNPM_VERSION = "10.34.8"
const PYTHON_MODULES = "import grpc, google.protobuf"

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

const pythonCandidates = () => [process.env.SNAKEPIT_PYTHON, "python3", "/usr/bin/python3", "python"].filter(Boolean)

const pythonWithGrpc = () => pythonCandidates().find((py) => quiet(py, ["-c", PYTHON_MODULES], 30_000).status === 0)

/** An interpreter that imports grpc and protobuf: found, else pip, else the system package manager. */
const ensurePython = () => {
  const found = pythonWithGrpc()
  if (found) return found
  const py = pythonCandidates().find((p) => quiet(p, ["--version"]).status === 0)
  if (!py) throw new Error("no python3 on this machine: install Python 3.9+ first")
  log(`${py} cannot import grpc/protobuf; trying pip`)
  const pip = quiet(
    py,
    [
      "-m",
      "pip",
      "install",
      "--user",
      "--disable-pip-version-check",
      "--timeout",
      "10",
      "--retries",
      "0",
      "grpcio",
      "protobuf"
    ],
    300_000
  )
  if (pip.status === 0 && pythonWithGrpc()) return pythonWithGrpc()
  if (quiet("apt-get", ["--version"]).status === 0) {
    // As root apt-get runs directly; otherwise only through a sudo that needs no password.
    const [cmd, ...prefix] = process.getuid?.() === 0 ? ["apt-get"] : ["sudo", "-n", "apt-get"]
    const pkgs = ["python3-grpcio", "python3-protobuf"]
    log(`pip could not install them; installing ${pkgs.join(" ")} with apt-get`)
    run(cmd, [...prefix, "update", "-qq"])
    run(cmd, [...prefix, "install", "-y", "-qq", ...pkgs], {
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" }
    })
    const installed = pythonWithGrpc()
    if (installed) return installed
  }
  throw new Error(
    "no Python interpreter can import grpc and protobuf, and neither pip nor apt-get could install them. Install grpcio and protobuf for python3, or set SNAKEPIT_PYTHON."
  )
}

const setup = () => {
  const pnpm = ensurePnpm()
  log("installing JS dependencies")
  run(pnpm, ["install", "--frozen-lockfile", "--reporter=append-only"])
  const python = ensurePython()
  log(`Python: ${python}`)
  log("building packages")
  run(pnpm, ["run", "-s", "build"])
  return { pnpm, python }
}

const testPython = (python) => {
  log("Python tests")
  run(python, ["-m", "unittest", "discover", "-s", "python/tests", "-t", "python", "-v"], {
    env: { ...process.env, PYTHONPATH: join(root, "python"), PYTHONDONTWRITEBYTECODE: "1" }
  })
}

const main = () => {
  const [cmd] = process.argv.slice(2)
  switch (cmd) {
    case "setup":
      setup()
      return
    case "demo": {
      const { python } = setup()
      run(process.execPath, ["examples/demo.mjs"], {
        env: { ...process.env, SNAKEPIT_PYTHON: process.env.SNAKEPIT_PYTHON ?? python }
      })
      return
    }
    case "test-python":
      testPython(ensurePython())
      return
    case "test": {
      const { pnpm } = setup()
      const python = ensurePython()
      log("type-check and lint")
      run(pnpm, ["run", "-s", "typecheck"])
      run(pnpm, ["run", "-s", "lint"])
      run(pnpm, ["run", "-s", "proto:check"])
      testPython(python)
      log("TypeScript tests")
      run(pnpm, ["exec", "vitest", "run"])
      log("release smoke test")
      run(pnpm, ["run", "-s", "test:smoke"])
      log("all checks passed")
      return
    }
    default:
      console.error("usage: node scripts/dev.mjs <setup|demo|test|test-python>")
      process.exitCode = 2
  }
}

try {
  main()
} catch (err) {
  log(err.message)
  process.exitCode = err.exitCode ?? 1
}
