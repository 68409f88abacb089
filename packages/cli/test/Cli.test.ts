/**
 * The command line itself: subcommand listing, usage errors, exit codes, version.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { Cli } from "../src/index.js"
import { runCli } from "./helpers.js"

describe("snakepit (command line)", () => {
  it.live("lists its commands when run without one", () =>
    Effect.gen(function* () {
      const result = yield* runCli()
      expect(result.code).toBe(0)
      for (const command of ["doctor", "status", "sweep"]) expect(result.stdout).toContain(`snakepit ${command}`)
    })
  )

  it.live("exits 2 on a usage error, saying what was wrong", () =>
    Effect.gen(function* () {
      const result = yield* runCli("status", "--no-such-option")
      expect(result.code).toBe(2)
      expect(result.stderr).toContain("--no-such-option")
    })
  )

  it.live("prints its version", () =>
    Effect.gen(function* () {
      const result = yield* runCli("--version")
      expect(result.code).toBe(0)
      expect(result.stdout).toContain(Cli.version)
      expect(Cli.version).toMatch(/^\d+\.\d+\.\d+/)
    })
  )
})
