#!/usr/bin/env node
// Ships the Python worker runtime inside @snakepit/core (packages/core/python), so an
// installed package can start workers without this repository beside it.
import { cpSync, rmSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const target = join(root, "packages", "core", "python")
rmSync(target, { recursive: true, force: true })
cpSync(join(root, "python", "snakepit_bridge"), join(target, "snakepit_bridge"), {
  recursive: true,
  filter: (src) => !src.includes("__pycache__") && !src.endsWith(".pyc")
})
