/**
 * `snakepit doctor` against the real machine: a real interpreter search, a real worker started
 * and stopped, a real registry. Each test leaves no process behind.
 */
import { chmodSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { ProcessInfo } from "@snakepit/registry"
import { Venv } from "@snakepit/testkit"
import { Effect, Schema } from "effect"
import { Checks, checkNamed, runCli, tempDir } from "./helpers.js"

const adapters = fileURLToPath(new URL("./fixtures/adapters", import.meta.url))

/** `doctor --json` with `args`; its checks, and the exit code. */
const doctorJson = (...args: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const result = yield* runCli("doctor", ...args, "--json")
    return { code: result.code, checks: yield* Schema.decodeUnknown(Checks)(result.stdout) }
  })

/** The pid in a check's "worker pid N" detail. */
const workerPid = (detail: string) => Number(/worker pid (\d+)/.exec(detail)?.[1])

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
      expect(checkNamed(checks, "python").detail).toMatch(/Python \d+\.\d+\.\d+/)
      // The default local transport listens on no port: nothing to check there.
      expect(checkNamed(checks, "loopback")).toMatchObject({ status: "skip" })
      // For gRPC the interpreter needs grpcio and protobuf, and workers a loopback port.
      const grpc = yield* runCli("doctor", "--transport", "grpc", "--data-dir", join(dir, "data"), "--json")
      const grpcChecks = yield* Schema.decodeUnknown(Checks)(grpc.stdout)
      expect(grpc.code).toBe(0)
      expect(checkNamed(grpcChecks, "python").detail).toMatch(/grpcio \d[\w.]*, protobuf \d[\w.]*/)
      expect(checkNamed(grpcChecks, "loopback").status).toBe("ok")
      expect(checkNamed(grpcChecks, "worker").status).toBe("ok")
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
      for (const name of ["node", "config", "python", "bridge", "worker", "data-dir", "leftovers"]) {
        expect(lines.some((line) => new RegExp(`^(ok|warn) +${name} `).test(line))).toBe(true)
      }
      expect(lines.some((line) => /^skip +loopback +not needed: the local transport/.test(line))).toBe(true)
      expect(result.stdout).toMatch(/ok +worker +showcase worker pid \d+ ready in \d+ ms/)
      expect(lines.at(-1)).toMatch(/^\d+ ok, \d+ warn, 0 FAIL, 1 skipped$/)
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
      expect(text.stdout).toMatch(/, 1 FAIL, 2 skipped$/)
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

describe("snakepit doctor --adapter (the user's own adapter, real workers)", () => {
  it.scopedLive("imports, starts, lists the tools of and stops a good adapter; reports a shim and runs past it", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      // A shim in front of the suite's interpreter, as pyenv puts one on PATH.
      const suite = Venv.suitePython()
      const shim = join(dir, "python3")
      writeFileSync(shim, `#!/bin/sh\nexec ${suite} "$@"\n`)
      chmodSync(shim, 0o755)
      const { code, checks } = yield* doctorJson(
        "--python",
        shim,
        "--adapter",
        "good_adapter:GoodAdapter",
        "--python-path",
        adapters,
        "--data-dir",
        join(dir, "data")
      )
      expect(checks.filter((c) => c.status === "fail")).toEqual([])
      expect(code).toBe(0)
      expect(checks.map((c) => c.check)).toEqual([
        "node",
        "config",
        "python",
        "bridge",
        "loopback",
        "worker",
        "adapter",
        "data-dir",
        "leftovers"
      ])
      const python = checkNamed(checks, "python")
      expect(python.detail).toContain(`${shim} → ${suite} (a shim)`)
      expect(python.detail).toContain(`workers run ${suite} directly, not through the shim`)
      const adapter = checkNamed(checks, "adapter")
      expect(adapter).toMatchObject({ status: "ok", fix: null })
      expect(adapter.detail).toMatch(
        /^good_adapter:GoodAdapter from .*: worker pid \d+ ready in \d+ ms with 2 tools \(double, greet\), stopped with nothing left running$/
      )
      expect(ProcessInfo.isAlive(workerPid(adapter.detail))).toBe(false)
    })
  )

  it.scopedLive("an adapter importing a library the interpreter lacks: the install command for that environment", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const suite = Venv.suitePython()
      const { code, checks } = yield* doctorJson(
        "--adapter",
        "needs_dependency:NeedsDependency",
        "--python-path",
        adapters,
        "--data-dir",
        dir
      )
      expect(code).toBe(1)
      expect(checks.filter((c) => c.status === "fail").map((c) => c.check)).toEqual(["adapter"])
      const adapter = checkNamed(checks, "adapter")
      expect(adapter.detail).toBe(
        `adapter module needs_dependency imports snakepit_doctor_missing_dep, which ${suite} cannot import: ModuleNotFoundError: No module named 'snakepit_doctor_missing_dep'`
      )
      expect(adapter.fix).toContain(`${suite} -m pip install snakepit_doctor_missing_dep`)
      expect(adapter.fix).toMatch(/the traceback ends at File ".*needs_dependency\.py", line 3, in <module>/)
    })
  )

  it.scopedLive("an adapter that raises while starting: the exception and where it was raised", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const { code, checks } = yield* doctorJson(
        "--adapter",
        "start_fails:StartFails",
        "--python-path",
        adapters,
        "--data-dir",
        dir
      )
      expect(code).toBe(1)
      const adapter = checkNamed(checks, "adapter")
      expect(adapter.status).toBe("fail")
      expect(adapter.detail).toBe(
        "adapter start_fails:StartFails was imported but raised while starting (its __init__ or on_start): RuntimeError: model weights not found at /models/missing.bin"
      )
      expect(adapter.fix).toMatch(
        /^fix StartFails's start-up \(the traceback ends at File ".*start_fails\.py", line 8, in on_start\)/
      )
    })
  )

  it.scopedLive("a bad --python-path: a directory that does not exist, and one without the module", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const nowhere = join(dir, "no-such-dir")
      const missingDir = yield* doctorJson(
        "--adapter",
        "good_adapter:GoodAdapter",
        "--python-path",
        nowhere,
        "--data-dir",
        dir
      )
      expect(missingDir.code).toBe(1)
      const notADir = checkNamed(missingDir.checks, "adapter")
      expect(notADir.status).toBe("fail")
      expect(notADir.detail).toContain(`--python-path ${nowhere}: not a directory`)
      expect(notADir.fix).toContain("good_adapter.py")

      // The directory exists, but the adapter's module is elsewhere.
      const elsewhere = yield* doctorJson(
        "--adapter",
        "good_adapter:GoodAdapter",
        "--python-path",
        dir,
        "--data-dir",
        dir
      )
      expect(elsewhere.code).toBe(1)
      const notOnPath = checkNamed(elsewhere.checks, "adapter")
      expect(notOnPath.detail).toBe(
        `adapter module good_adapter is not on the python path (--python-path ${dir}): ModuleNotFoundError: No module named 'good_adapter'`
      )
      expect(notOnPath.fix).toBe(
        "pass --python-path the directory that contains good_adapter.py or the package directory good_adapter/ (in the pool: the `pythonPath` option)"
      )
    })
  )

  it.scopedLive(
    "an interpreter without grpc: python FAILs with that venv's install command; the adapter is skipped",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir
        const venv = yield* Venv.make()
        const { code, checks } = yield* doctorJson(
          "--transport",
          "grpc",
          "--python",
          venv.python,
          "--adapter",
          "good_adapter:GoodAdapter",
          "--python-path",
          adapters,
          "--data-dir",
          dir
        )
        expect(code).toBe(1)
        const python = checkNamed(checks, "python")
        expect(python.status).toBe("fail")
        expect(python.detail).toContain(`${venv.python}: Python 3.`)
        expect(python.detail).toContain("cannot import grpc (ModuleNotFoundError: No module named 'grpc')")
        expect(python.fix).toBe(
          `install grpcio and protobuf into the venv at ${venv.prefix}: \`${venv.python} -m ensurepip && ${venv.python} -m pip install grpcio protobuf\`; or pass --python an interpreter that has them`
        )
        expect(checkNamed(checks, "worker").status).toBe("skip")
        expect(checkNamed(checks, "adapter")).toMatchObject({
          status: "skip",
          detail: "not started: no usable Python interpreter (see python)"
        })
      })
  )
})
