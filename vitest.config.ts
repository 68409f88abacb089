import { defineConfig } from "vitest/config"
import { workerPython } from "./scripts/python.mjs"

// The interpreter the set-up chose (scripts/python.mjs): SNAKEPIT_PYTHON, else the project venv.
const python = workerPython()
const pythonEnv: Record<string, string> = python === undefined ? {} : { SNAKEPIT_PYTHON: python }

/** The suites that run real Python workers: they run once per transport. */
const realWorkerSuites = [
  "packages/core/test/Worker.test.ts",
  "packages/core/test/Pool.test.ts",
  "packages/core/test/Streaming.test.ts",
  "packages/core/test/HostBridge.test.ts",
  "packages/core/test/HostDeath.test.ts",
  "packages/core/test/Churn.test.ts"
]

export default defineConfig({
  test: {
    // Real-Python tests spawn processes; two cores cannot run many files at once.
    pool: "forks",
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    testTimeout: 60_000,
    hookTimeout: 60_000,
    projects: [
      {
        extends: true,
        test: {
          name: "local",
          include: ["packages/*/test/**/*.test.ts"],
          env: { ...pythonEnv, SNAKEPIT_TRANSPORT: "local" }
        }
      },
      {
        extends: true,
        test: { name: "grpc", include: realWorkerSuites, env: { ...pythonEnv, SNAKEPIT_TRANSPORT: "grpc" } }
      }
    ]
  }
})
