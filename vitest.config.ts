import { defineConfig } from "vitest/config"
import { workerPython } from "./scripts/python.mjs"

// The interpreter the set-up chose (scripts/python.mjs): SNAKEPIT_PYTHON, else the project venv.
const python = workerPython()

export default defineConfig({
  test: {
    include: ["packages/*/test/**/*.test.ts"],
    // Real-Python tests spawn processes; two cores cannot run many files at once.
    pool: "forks",
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    testTimeout: 60_000,
    hookTimeout: 60_000,
    env: python === undefined ? {} : { SNAKEPIT_PYTHON: python }
  }
})
