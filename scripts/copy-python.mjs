#!/usr/bin/env node
// Ships the Python worker runtime inside @snakepit/core (packages/core/python), so an
// installed package can start workers without this repository beside it.
import { spawnSync } from "node:child_process"
import { cpSync, rmSync } from "node:fs"
import { join } from "node:path"
import { root, workerPython } from "./python.mjs"

const target = join(root, "packages", "core", "python")
rmSync(target, { recursive: true, force: true })
cpSync(join(root, "python", "snakepit_bridge"), join(target, "snakepit_bridge"), {
  recursive: true,
  filter: (src) => !src.includes("__pycache__") && !src.endsWith(".pyc")
})

// Precompile the bytecode: a worker otherwise compiles snakepit_bridge from source on every
// start (~20 ms) whenever it cannot write __pycache__ (PYTHONDONTWRITEBYTECODE, read-only
// node_modules). Compiled by the interpreter the set-up chose and by the system ones, as an
// installed pool may pick any of them; the .pyc names carry the Python version, so they never
// clash. checked-hash rather than timestamps, because npm pack rewrites every mtime: Python
// still checks them against the source, so an edited .py is never run stale. Best effort: it never fails the build.
const pythons = [...new Set([workerPython(), "/usr/bin/python3", "python3"].filter(Boolean))]
const compiled = pythons.filter(
  (python) =>
    spawnSync(python, ["-m", "compileall", "-q", "--invalidation-mode", "checked-hash", target], {
      stdio: "ignore",
      timeout: 60_000
    }).status === 0
)
if (compiled.length === 0) {
  console.error(`copy-python: no Python could precompile ${target} (tried ${pythons.join(", ")}); skipped`)
}
