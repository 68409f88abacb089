/**
 * `snakepit doctor` against the real machine: a real interpreter search, a real worker started
 * and stopped, a real registry. Each test leaves no process behind.
 */
import { writeFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { ProcessInfo } from "@snakepit/registry"
import { Effect, Schema } from "effect"
import { Checks, checkNamed, runCli, tempDir } from "./helpers.js"

describe("snakepit doctor", () => {
  it.scopedLive("passes on a good setup: every check ok, the interpreter and the worker's ready time reported", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const result = yield* runCli("doctor", "--data-dir", join(dir, "data"), "--json")
      const checks = yield* Schema.decodeUnknown(Checks)(result.stdout)
      expect(checks.map((c) => c.check)).toEqual([
        "node",
        "config",
        "python",
        "bridge",
        "loopback",
        "worker",
        "data-dir",
        "leftovers"
      ])
      expect(checks.filter((c) => c.status === "fail")).toEqual([])
      expect(result.code).toBe(0)
      expect(checkNamed(checks, "python").detail).toMatch(/Python \d+\.\d+\.\d+.*grpcio \d[\w.]*, protobuf \d[\w.]*/)
      const worker = checkNamed(checks, "worker")
      expect(worker.status).toBe("ok")
      expect(worker.detail).toMatch(/ready in \d+ ms/)
      // The worker the doctor started is gone once it answers.
      const pid = Number(/pid (\d+)/.exec(worker.detail)?.[1])
      expect(pid).toBeGreaterThan(0)
      expect(ProcessInfo.isAlive(pid)).toBe(false)
      expect(checkNamed(checks, "data-dir").detail).toContain(join(dir, "data", "registry.db"))
      expect(checkNamed(checks, "leftovers")).toMatchObject({ status: "ok", fix: null })
    })
  )

  it.scopedLive("prints one line per check and a summary in text mode", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const result = yield* runCli("doctor", "--data-dir", dir)
      expect(result.code).toBe(0)
      const lines = result.stdout.split("\n")
      for (const name of ["node", "config", "python", "bridge", "loopback", "worker", "data-dir", "leftovers"]) {
        expect(lines.some((line) => new RegExp(`^(ok|warn) +${name} `).test(line))).toBe(true)
      }
      expect(result.stdout).toMatch(/ok +worker +showcase worker pid \d+ ready in \d+ ms/)
      expect(lines.at(-1)).toMatch(/^\d+ ok, \d+ warn, 0 FAIL, 0 skipped$/)
    })
  )

  it.scopedLive("FAILs the python check with a fix for a missing interpreter, and skips the worker", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const json = yield* runCli("doctor", "--python", "/nonexistent/python3", "--data-dir", dir, "--json")
      expect(json.code).toBe(1)
      const checks = yield* Schema.decodeUnknown(Checks)(json.stdout)
      const python = checkNamed(checks, "python")
      expect(python.status).toBe("fail")
      expect(python.detail).toContain("/nonexistent/python3: not found")
      expect(python.fix).toContain("--python")
      expect(checkNamed(checks, "worker")).toMatchObject({ status: "skip", fix: null })
      expect(checkNamed(checks, "worker").detail).toContain("not started")
      // Everything else still ran.
      expect(checkNamed(checks, "data-dir").status).toBe("ok")

      const text = yield* runCli("doctor", "--python", "/nonexistent/python3", "--data-dir", dir)
      expect(text.code).toBe(1)
      expect(text.stdout).toMatch(/^FAIL +python +no usable interpreter .*\/nonexistent\/python3: not found$/m)
      expect(text.stdout).toMatch(/^ +fix: .*--python/m)
      expect(text.stdout).toMatch(/^skip +worker +not started/m)
      expect(text.stdout).toMatch(/, 1 FAIL, 1 skipped$/)
    })
  )

  it.scopedLive("FAILs the data-dir check when the data dir lies under a file (ENOTDIR), naming the file", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const file = join(dir, "not-a-dir")
      writeFileSync(file, "")
      const result = yield* runCli("doctor", "--data-dir", join(file, "data"), "--json")
      expect(result.code).toBe(1)
      const checks = yield* Schema.decodeUnknown(Checks)(result.stdout)
      const dataDir = checkNamed(checks, "data-dir")
      expect(dataDir.status).toBe("fail")
      expect(dataDir.detail).toContain("ENOTDIR")
      expect(dataDir.fix).toContain(`${file} is a file`)
      expect(checkNamed(checks, "leftovers").status).toBe("skip")
      expect(checks.filter((c) => c.status === "fail").map((c) => c.check)).toEqual(["data-dir"])
    })
  )
})
