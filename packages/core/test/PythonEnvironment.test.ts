/**
 * Interpreter resolution against real interpreters: venvs made for the test, a shim script in
 * front of one, and the exact install command a missing module gets for each kind of
 * environment. Workers started here are spawned with the resolved executable, never the shim.
 */
import { chmodSync, existsSync, readFileSync, realpathSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { RunId } from "@snakepit/registry"
import { Processes, Venv } from "@snakepit/testkit"
import { Effect, Exit, Scope } from "effect"
import { Diagnostics, PythonEnvironment, Worker } from "../src/index.js"

/** argv[0] of a live process, as the OS recorded the exec. */
const argv0 = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0]

/** A shell script that execs `target`: what a pyenv/asdf shim is. */
const shimFor = (dir: string, target: string) => {
  const path = join(dir, "python3")
  writeFileSync(path, `#!/bin/sh\nexec ${target} "$@"\n`)
  chmodSync(path, 0o755)
  return path
}

const environment = (overrides: Partial<PythonEnvironment.PythonEnvironment>): PythonEnvironment.PythonEnvironment => ({
  command: "python3",
  executable: "/usr/bin/python3",
  version: "3.11.2",
  kind: "system",
  prefix: "/usr",
  shim: false,
  modules: [
    { name: "grpc", version: undefined, error: "ModuleNotFoundError: No module named 'grpc'" },
    { name: "google.protobuf", version: undefined, error: "ModuleNotFoundError: No module named 'google'" }
  ],
  missing: ["grpc", "google.protobuf"],
  externallyManaged: false,
  debianSystem: false,
  hasPip: true,
  ...overrides
})

describe("PythonEnvironment.inspect (real interpreters)", () => {
  it.scoped("a venv: its own executable and prefix, kind venv, not a shim, the modules' versions", () =>
    Effect.gen(function* () {
      const suite = Venv.suitePython()
      const venv = yield* Venv.make({ shareModulesOf: suite })
      const env = yield* PythonEnvironment.inspect(venv.python)
      expect(env).toMatchObject({
        command: venv.python,
        executable: venv.python,
        kind: "venv",
        prefix: venv.prefix,
        shim: false,
        missing: []
      })
      expect(env.version).toMatch(/^3\.\d+\.\d+$/)
      expect(env.modules.map((m) => m.name)).toEqual(["grpc", "google.protobuf"])
      expect(env.modules.every((m) => m.error === undefined && /^\d/.test(m.version ?? ""))).toBe(true)
    }).pipe(Effect.provide(NodeContext.layer))
  )

  it.scoped("a bare venv lacks grpc: named, with the install command for that venv; [] requires nothing", () =>
    Effect.gen(function* () {
      const venv = yield* Venv.make()
      const env = yield* PythonEnvironment.inspect(venv.python)
      expect(env.missing).toEqual(["grpc", "google.protobuf"])
      expect(env.modules[0]?.error).toContain("ModuleNotFoundError")
      // Made without pip: the command bootstraps it first.
      expect(PythonEnvironment.installCommand(env)).toBe(
        `${venv.python} -m ensurepip && ${venv.python} -m pip install grpcio protobuf`
      )
      expect(PythonEnvironment.installHint(env)).toBe(
        `install grpcio and protobuf into the venv at ${venv.prefix}: \`${venv.python} -m ensurepip && ${venv.python} -m pip install grpcio protobuf\``
      )
      // A transport that needs only the standard library asks for no module: the same venv is fine.
      const stdlibOnly = yield* Diagnostics.diagnosePython(venv.python, [])
      expect(stdlibOnly.chosen).toMatchObject({ executable: venv.python, missing: [], modules: [] })
      const forGrpc = yield* Diagnostics.diagnosePython(venv.python)
      expect(forGrpc.chosen).toBeUndefined()
      expect(forGrpc.fix).toBe(PythonEnvironment.installHint(env))
    }).pipe(Effect.provide(NodeContext.layer))
  )

  it.scoped("a uv venv (pyvenv.cfg says uv) gets `uv pip install --python <exe>`", () =>
    Effect.gen(function* () {
      const venv = yield* Venv.make({ uvMarker: true })
      const env = yield* PythonEnvironment.inspect(venv.python)
      expect(env.kind).toBe("uv")
      expect(PythonEnvironment.installCommand(env)).toBe(`uv pip install --python ${venv.python} grpcio protobuf`)
      expect(PythonEnvironment.installHint(env)).toContain(`into the uv venv at ${venv.prefix}`)
    }).pipe(Effect.provide(NodeContext.layer))
  )

  it.scoped("a shim is seen through: shim true, the executable it runs, and workers spawned with that", () =>
    Effect.gen(function* () {
      const venv = yield* Venv.make({ shareModulesOf: Venv.suitePython() })
      const shim = shimFor(venv.prefix, venv.python)
      const env = yield* PythonEnvironment.inspect(shim)
      expect(env).toMatchObject({ command: shim, executable: venv.python, shim: true, kind: "venv" })
      expect(PythonEnvironment.describe(env)).toBe(
        `${shim} → ${venv.python} (a shim): Python ${env.version}, venv at ${venv.prefix}`
      )

      const runId = RunId.generate()
      const scope = yield* Scope.make()
      const worker = yield* Worker.make({ python: shim, runId }).pipe(Scope.extend(scope))
      // The OS ran the venv's interpreter itself: the shim script was not exec'd for the worker.
      expect(argv0(worker.pid)).toBe(venv.python)
      expect(worker.python).toBe(venv.python)
      expect(yield* worker.execute("add", { a: 1, b: 2 })).toBe(3)
      yield* Scope.close(scope, Exit.void)
      yield* Processes.awaitRunGone(runId)
    }).pipe(Effect.provide(NodeContext.layer))
  )

  it.scoped("a gRPC worker in a venv without grpc fails with python_not_found naming it, what it lacks, the fix", () =>
    Effect.gen(function* () {
      const venv = yield* Venv.make()
      const error = yield* Worker.make({ python: venv.python, runId: RunId.generate(), transport: "grpc" }).pipe(
        Effect.flip
      )
      expect(error._tag).toBe("WorkerStartError")
      if (error._tag !== "WorkerStartError") return
      expect(error.reason).toBe("python_not_found")
      expect(error.tried).toEqual([venv.python])
      expect(error.detail).toContain(`${venv.python} (Python `)
      expect(error.detail).toContain("venv): cannot import grpc (ModuleNotFoundError: No module named 'grpc')")
      expect(error.detail).toContain(
        `To fix: install grpcio and protobuf into the venv at ${venv.prefix}: \`${venv.python} -m ensurepip && ${venv.python} -m pip install grpcio protobuf\``
      )
      expect(error.detail).not.toContain("apt-get")
    }).pipe(Effect.provide(NodeContext.layer))
  )

  it.effect("a command that does not exist is NotRunnable, not an environment", () =>
    Effect.gen(function* () {
      const failure = yield* PythonEnvironment.inspect("/nonexistent/python3").pipe(Effect.flip)
      expect(failure).toEqual({ command: "/nonexistent/python3", why: "not found" })
    }).pipe(Effect.provide(NodeContext.layer))
  )

  const py39 = "/root/.pyenv/versions/3.9.18/bin/python3"
  it.scoped.runIf(existsSync(py39))("a Python older than 3.10 is rejected by its version", () =>
    Effect.gen(function* () {
      const diagnosis = yield* Diagnostics.diagnosePython(realpathSync(py39))
      expect(diagnosis.chosen).toBeUndefined()
      expect(diagnosis.tried[0]?.rejection).toMatch(
        /^Python 3\.9\.\d+ is too old: the worker runtime needs 3\.10 or later$/
      )
      expect(diagnosis.fix).toContain("use Python 3.10 or later")
    }).pipe(Effect.provide(NodeContext.layer))
  )
})

describe("PythonEnvironment.installHint (each kind of environment)", () => {
  it("Debian's system Python: the apt-get line, or a venv", () => {
    const env = environment({ externallyManaged: true, debianSystem: true })
    expect(PythonEnvironment.installCommand(env)).toBe("apt-get install python3-grpcio python3-protobuf")
    expect(PythonEnvironment.installHint(env)).toBe(
      "/usr/bin/python3 is Debian's system Python: install the distribution's packages as root, `apt-get install python3-grpcio python3-protobuf`, or (with python3-venv installed) make a venv for your application and use it: `/usr/bin/python3 -m venv .venv && .venv/bin/python -m pip install grpcio protobuf`, then set SNAKEPIT_PYTHON (or the `python` option) to .venv/bin/python"
    )
  })

  it("another externally managed Python: no pip line into it, a venv instead", () => {
    const env = environment({ executable: "/opt/homebrew/bin/python3", externallyManaged: true })
    expect(PythonEnvironment.installCommand(env)).toBeUndefined()
    expect(PythonEnvironment.installHint(env)).toMatch(
      /^\/opt\/homebrew\/bin\/python3 is externally managed \(pip refuses to install into it\): make a venv/
    )
  })

  it("a pip-managed interpreter (pyenv, python.org): pip for that exact executable", () => {
    const env = environment({ executable: "/root/.pyenv/versions/3.11.7/bin/python3" })
    expect(PythonEnvironment.installCommand(env)).toBe(
      "/root/.pyenv/versions/3.11.7/bin/python3 -m pip install grpcio protobuf"
    )
  })

  it("conda: conda install into that prefix, or its pip", () => {
    const env = environment({ kind: "conda", executable: "/opt/envs/ml/bin/python", prefix: "/opt/envs/ml" })
    expect(PythonEnvironment.installCommand(env)).toBe("conda install -p /opt/envs/ml -c conda-forge grpcio protobuf")
    expect(PythonEnvironment.installHint(env)).toBe(
      "install grpcio and protobuf into the conda environment at /opt/envs/ml: `conda install -p /opt/envs/ml -c conda-forge grpcio protobuf` (or `/opt/envs/ml/bin/python -m pip install grpcio protobuf`)"
    )
  })

  it("a venv with pip, a path with a space, and other modules (import name → distribution name)", () => {
    const env = environment({ kind: "venv", executable: "/srv/my app/.venv/bin/python", prefix: "/srv/my app/.venv" })
    expect(PythonEnvironment.installCommand(env, ["sklearn.linear_model", "numpy.linalg"])).toBe(
      "'/srv/my app/.venv/bin/python' -m pip install scikit-learn numpy"
    )
  })
})
