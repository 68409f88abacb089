/**
 * `snakepit doctor`: checks everything a pool needs, in the order a pool needs it, and for each
 * problem says what to do. Node, the `SNAKEPIT_*` environment, the Python interpreter (found
 * exactly as workers find it), the worker runtime, a loopback port, one real worker started,
 * pinged and stopped, the registry's data directory, and orphaned processes of dead runs.
 *
 * @since 0.1.0
 */
import { statSync } from "node:fs"
import { type AddressInfo, createServer } from "node:net"
import { delimiter, resolve } from "node:path"
import { Command, Options } from "@effect/cli"
import type { CommandExecutor } from "@effect/platform/CommandExecutor"
import {
  Diagnostics,
  PythonEnvironment,
  type ResolvedPoolOptions,
  type Transport,
  Worker,
  type WorkerStartError
} from "@snakepit/core"
import { ProcessInfo, Registry, RunId } from "@snakepit/registry"
import { Console, Duration, Effect, Either, Option, Schedule, Schema } from "effect"
import { DiagnosticFailure } from "./errors.js"
import { dataDirArgument, dataDirSource, registryLayer } from "./internal/dataDir.js"
import { count, shellQuote } from "./internal/format.js"
import * as SharedOptions from "./internal/options.js"
import { describeRegistryFailure } from "./internal/registryFailure.js"
import { describeOrphans, inspect, sweepFix } from "./Status.js"

/** How a check came out. `skip`: not run, because a check it depends on failed. */
export type CheckStatus = "ok" | "warn" | "fail" | "skip"

/** One check's outcome: what was found, and, unless it is ok, what to do about it. */
export interface Check {
  /** The check's name: node, config, python, bridge, loopback, worker, adapter (with --adapter), data-dir, leftovers. */
  readonly check: string
  readonly status: CheckStatus
  /** What was found, on one line. */
  readonly detail: string
  /** What to do; null when there is nothing to do. */
  readonly fix: string | null
}

/** Options of `snakepit doctor`. */
export interface DoctorOptions {
  /** The interpreter to check, as the pool's `python` option would name it (default: SNAKEPIT_PYTHON, else the search). */
  readonly python?: string | undefined
  /** The registry's directory (default: SNAKEPIT_DATA_DIR, else the per-user state directory). */
  readonly dataDir?: string | undefined
  /** Your adapter, `module` or `module:Class`: started in one worker, its tools listed, stopped (the `adapter` check). */
  readonly adapter?: string | undefined
  /** Directories holding your adapter's modules, as the pool's `pythonPath` option. */
  readonly pythonPath?: ReadonlyArray<string> | undefined
  /** The transport to check for (default: SNAKEPIT_TRANSPORT, else local). */
  readonly transport?: Transport | undefined
  /** Called with each check as soon as it completes (to print progressively). */
  readonly onCheck?: ((check: Check) => Effect.Effect<void>) | undefined
}

const ok = (check: string, detail: string): Check => ({ check, status: "ok", detail, fix: null })
const warn = (check: string, detail: string, fix: string): Check => ({ check, status: "warn", detail, fix })
const fail = (check: string, detail: string, fix: string): Check => ({ check, status: "fail", detail, fix })
const skip = (check: string, detail: string): Check => ({ check, status: "skip", detail, fix: null })

const MIN_NODE_MAJOR = 20

// ---------------------------------------------------------------------------------------------
// node, config
// ---------------------------------------------------------------------------------------------

const checkNode = Effect.sync((): Check => {
  const major = Number(process.versions.node.split(".")[0])
  return major >= MIN_NODE_MAJOR
    ? ok("node", `Node ${process.version} (Snakepit needs ${MIN_NODE_MAJOR} or later)`)
    : fail(
        "node",
        `Node ${process.version} is too old: Snakepit needs ${MIN_NODE_MAJOR} or later`,
        `install Node ${MIN_NODE_MAJOR} or later (e.g. \`nvm install ${MIN_NODE_MAJOR}\`, or your distribution's nodejs package)`
      )
})

const checkConfig = (options: DoctorOptions) =>
  Effect.gen(function* () {
    const set = Object.keys(process.env)
      .filter((key) => key.startsWith("SNAKEPIT_") && (process.env[key] ?? "").trim() !== "")
      .sort()
    const resolved = yield* Diagnostics.resolveOptions({
      ...(options.python === undefined ? {} : { python: options.python }),
      ...(options.dataDir === undefined ? {} : { dataDir: options.dataDir })
    }).pipe(Effect.either)
    if (Either.isLeft(resolved)) {
      const error = resolved.left
      const fix = error.key.startsWith("SNAKEPIT_")
        ? `set ${error.key} to a valid value (${error.reason}), or unset it`
        : `fix the ${error.key} option (${error.reason})`
      return { check: fail("config", error.message, fix), pool: undefined }
    }
    const detail =
      set.length === 0
        ? "no SNAKEPIT_* variable set: pools use their defaults"
        : `${set.join(", ")} set; every value is valid`
    return { check: ok("config", detail), pool: resolved.right[0] }
  })

// ---------------------------------------------------------------------------------------------
// python, bridge
// ---------------------------------------------------------------------------------------------

const describeTried = (tried: Diagnostics.TriedInterpreter): string =>
  `${tried.environment === undefined ? tried.python : PythonEnvironment.describe(tried.environment)}: ${tried.rejection ?? "rejected"}`

const SOURCE_LABEL: Record<Diagnostics.CandidateSource, string> = {
  option: "--python",
  SNAKEPIT_PYTHON: "SNAKEPIT_PYTHON",
  default: "the default search"
}

const SEARCH = `leave it unset to search ${Diagnostics.DEFAULT_CANDIDATES.join(", ")}`

const pythonFix = (diagnosis: Diagnostics.PythonDiagnosis): string => {
  const named = diagnosis.candidates[0] ?? ""
  if (diagnosis.fix === undefined) {
    switch (diagnosis.source) {
      case "option":
        return `${named} cannot be run: pass --python the path of an installed interpreter that imports grpc and protobuf (\`command -v python3\` shows one), or leave --python out to search ${Diagnostics.DEFAULT_CANDIDATES.join(", ")}`
      case "SNAKEPIT_PYTHON":
        return `SNAKEPIT_PYTHON=${named} cannot be run: set it to an installed interpreter that imports grpc and protobuf, or ${SEARCH}`
      default:
        return `no Python found: install Python ${Diagnostics.MIN_PYTHON.join(".")}+ with grpcio and protobuf (e.g. in a venv: \`python3 -m venv .venv && .venv/bin/python -m pip install grpcio protobuf\`, then SNAKEPIT_PYTHON=.venv/bin/python)`
    }
  }
  const point =
    diagnosis.source === "option"
      ? "or pass --python an interpreter that has them"
      : diagnosis.source === "SNAKEPIT_PYTHON"
        ? `or set SNAKEPIT_PYTHON to an interpreter that has them, or ${SEARCH}`
        : "or set SNAKEPIT_PYTHON (or the pool's `python` option) to an interpreter that has them"
  return `${diagnosis.fix}; ${point}`
}

const moduleVersions = (environment: PythonEnvironment.PythonEnvironment): string =>
  environment.modules.map((m) => `${PythonEnvironment.pipPackage(m.name)} ${m.version || "?"}`).join(", ")

const checkPython = (options: DoctorOptions, transport: Transport) =>
  Effect.gen(function* () {
    // The local transport needs only the standard library; gRPC also grpcio and protobuf.
    const diagnosis = yield* Diagnostics.diagnosePython(
      options.python,
      transport === "grpc" ? PythonEnvironment.DEFAULT_REQUIRED_MODULES : []
    )
    const source = `candidates from ${SOURCE_LABEL[diagnosis.source]}: ${diagnosis.candidates.join(", ")}`
    const chosen = diagnosis.chosen
    const rejected = diagnosis.tried.filter((t) => !t.accepted)
    if (chosen === undefined) {
      return {
        check: fail(
          "python",
          `no usable interpreter (${source}); tried ${rejected.map(describeTried).join("; ")}`,
          pythonFix(diagnosis)
        ),
        python: undefined
      }
    }
    // Workers are spawned with the executable: a shim is run once, here, and never per worker.
    const shim = chosen.shim ? `; workers run ${chosen.executable} directly, not through the shim` : ""
    const detail =
      `${[PythonEnvironment.describe(chosen), moduleVersions(chosen)].filter((part) => part !== "").join(", ")}${shim}` +
      ` (${source}${rejected.length > 0 ? `; rejected before it: ${rejected.map(describeTried).join("; ")}` : ""})`
    return { check: ok("python", detail), python: chosen }
  })

const checkBridge = Effect.sync(() => {
  const runtime = Diagnostics.bridgeRuntime()
  return runtime.path !== undefined
    ? { check: ok("bridge", `worker runtime snakepit_bridge at ${runtime.path}`), found: true }
    : {
        check: fail(
          "bridge",
          `worker runtime snakepit_bridge not found; looked in ${runtime.lookedIn.join(", ")}`,
          "reinstall @snakepit/core (its package ships python/snakepit_bridge); in a source checkout run `npm run build` (it copies python/ into packages/core)"
        ),
        found: false
      }
})

// ---------------------------------------------------------------------------------------------
// loopback
// ---------------------------------------------------------------------------------------------

class BindFailed extends Schema.TaggedError<BindFailed>()("BindFailed", {
  address: Schema.String,
  reason: Schema.String
}) {}

/** Listens on `address`:0 and closes again: the port the OS gave. */
const bindOnce = (address: string) =>
  Effect.async<number, BindFailed>((resume) => {
    const server = createServer()
    server.once("error", (error: NodeJS.ErrnoException) =>
      resume(Effect.fail(new BindFailed({ address, reason: `${error.code ?? "error"}: ${error.message}` })))
    )
    server.listen(0, address, () => {
      const port = (server.address() as AddressInfo).port
      server.close(() => resume(Effect.succeed(port)))
    })
    return Effect.sync(() => {
      server.close()
    })
  })

const checkLoopback = (transport: Transport) =>
  transport === "local"
    ? Effect.succeed(skip("loopback", "not needed: the local transport listens on no port"))
    : bindOnce("127.0.0.1").pipe(
        Effect.map((port) => ok("loopback", `listened on 127.0.0.1:${port} and closed it (workers serve gRPC there)`)),
        Effect.catchTag("BindFailed", (error) =>
          Effect.succeed(
            fail(
              "loopback",
              `cannot listen on ${error.address}: ${error.reason}`,
              "workers serve gRPC on 127.0.0.1: bring the loopback interface up (`ip link set lo up`) or allow local binds in this sandbox or firewall"
            )
          )
        )
      )

// ---------------------------------------------------------------------------------------------
// worker
// ---------------------------------------------------------------------------------------------

const Pong = Schema.Struct({ message: Schema.Literal("pong"), pid: Schema.Number })

const lastLines = (text: string, n: number): string =>
  text
    .trim()
    .split("\n")
    .filter((line) => line.trim() !== "")
    .slice(-n)
    .join(" | ")

const byHand = (python: string, adapter: string, pythonPath: ReadonlyArray<string>): string => {
  const path = [Diagnostics.bridgeRuntime().path ?? "<bridge>", ...pythonPath].join(delimiter)
  // Imports, constructs and starts the adapter as a worker would, without a host.
  const code = `from snakepit_bridge.loading import load_adapter_class as load; load(${JSON.stringify(adapter)})().on_start()`
  return `run it by hand to see why: PYTHONPATH=${shellQuote(path)} ${shellQuote(python)} -c ${shellQuote(code)}`
}

const startFix = (error: WorkerStartError, byHandLine: string, python: string, startupTimeout: Duration.Duration) => {
  switch (error.reason) {
    case "startup_timeout":
      return `the worker was not ready within ${Duration.format(startupTimeout)}: raise SNAKEPIT_STARTUP_TIMEOUT if the machine is just slow or loaded; else ${byHandLine}`
    case "connect_failed":
      return "the worker listened but the client could not connect: check the loopback check above, and that no grpc_proxy/http_proxy/https_proxy variable captures 127.0.0.1 (add it to no_proxy)"
    case "bad_readiness_line":
      return "something printed to the worker's stdout before its readiness line: look for a sitecustomize.py, usercustomize.py or PYTHONSTARTUP that prints"
    case "spawn_failed":
      return `the process could not be spawned: check that ${python} is executable by this user`
    case "python_not_found":
      return "see the python check above"
    default:
      return byHandLine
  }
}

/** Waits (bounded) until no process carries `runId`; the pids still alive after that. */
const survivorsOf = (runId: string) =>
  Effect.suspend(() => {
    const left = ProcessInfo.processesOfRun(runId)
    return left.length === 0 ? Effect.succeed(left) : Effect.fail(left)
  }).pipe(Effect.retry({ schedule: Schedule.spaced(Duration.millis(50)), times: 100 }), Effect.merge)

/**
 * Starts one real worker with `options` in its own scope, runs `use` on it, and stops it (the
 * scope's finalizer stops its whole process group); then waits until no process of its run is
 * left. `survivors` are the pids still alive after that.
 */
const trialWorker = <A, E>(
  options: Omit<Worker.WorkerOptions, "runId">,
  use: (worker: Worker.Worker) => Effect.Effect<A, E>
) =>
  Effect.gen(function* () {
    const runId = RunId.generate()
    const outcome = yield* Effect.scoped(
      Effect.gen(function* () {
        const [ready, worker] = yield* Effect.timed(Worker.make({ ...options, runId }))
        return { pid: worker.pid, ready, result: yield* use(worker) }
      })
    ).pipe(Effect.either)
    return { runId, outcome, survivors: yield* survivorsOf(runId) }
  })

const survivorsFailure = (check: string, runId: string, survivors: ReadonlyArray<number>): Check =>
  fail(
    check,
    `the worker was stopped but processes of its run ${runId} are still alive: ${survivors.join(", ")}`,
    `kill them (\`kill -9 ${survivors.join(" ")}\`) and report this as a Snakepit bug`
  )

const millis = (duration: Duration.Duration) => `${Math.round(Duration.toMillis(duration))} ms`

const checkWorker = (
  options: DoctorOptions,
  python: PythonEnvironment.PythonEnvironment | undefined,
  bridgeFound: boolean,
  pool: ResolvedPoolOptions | undefined
) =>
  Effect.gen(function* () {
    if (python === undefined) return skip("worker", "not started: no usable Python interpreter (see python)")
    if (!bridgeFound) return skip("worker", "not started: the worker runtime is missing (see bridge)")
    const startupTimeout = pool?.startupTimeout ?? Duration.seconds(30)
    // The same `python` the pool would pass, so the worker resolves it as a pool's worker does
    // (from the search just made, remembered), and the time to ready is a worker's own.
    const { runId, outcome, survivors } = yield* trialWorker(
      {
        id: "doctor",
        transport: options.transport ?? pool?.transport ?? "local",
        ...(options.python === undefined ? {} : { python: options.python }),
        startupTimeout,
        ...(pool ? { threadLimits: pool.threadLimits } : {})
      },
      (worker) => Effect.timed(worker.execute("ping", {}, { timeout: Duration.seconds(10) }))
    )
    if (survivors.length > 0) return survivorsFailure("worker", runId, survivors)
    if (Either.isLeft(outcome)) {
      const error = outcome.left
      if (error._tag === "WorkerStartError") {
        const stderr = lastLines(error.stderrTail, 3)
        return fail(
          "worker",
          `${error.message}${stderr === "" ? "" : `; stderr: ${stderr}`}`,
          startFix(error, byHand(python.executable, Worker.DEFAULT_ADAPTER, []), python.executable, startupTimeout)
        )
      }
      if (error._tag === "ConfigError") return fail("worker", error.message, "fix the setting it names (see config)")
      return fail(
        "worker",
        `the worker started but did not answer ping: ${error.message}`,
        "run `snakepit doctor --log-level debug` to see the worker's stderr"
      )
    }
    const { pid, ready, result } = outcome.right
    const [answered, pong] = result
    if (Option.isNone(Schema.decodeUnknownOption(Pong)(pong))) {
      return fail(
        "worker",
        `worker pid ${pid} answered ping with something other than {"message": "pong"}`,
        "the showcase adapter is not the one shipped with @snakepit/core: reinstall it"
      )
    }
    return ok(
      "worker",
      `showcase worker pid ${pid} ready in ${millis(ready)}, ping answered in ${millis(answered)}, stopped with nothing left running`
    )
  })

// ---------------------------------------------------------------------------------------------
// adapter (--adapter, --python-path)
// ---------------------------------------------------------------------------------------------

const exceptionLine = (error: WorkerStartError): string => {
  const text = error.traceback ?? error.stderrTail
  return (
    text
      .trim()
      .split("\n")
      .filter((line) => line.trim() !== "" && !line.startsWith(" "))
      .at(-1) ?? "(no traceback on stderr)"
  )
}

/** `File "/app/py/model.py", line 12, in on_start`: where the traceback ends, if it has frames. */
const lastFrame = (error: WorkerStartError): string | undefined =>
  (error.traceback ?? "")
    .split("\n")
    .filter((line) => /^\s+File "/.test(line))
    .at(-1)
    ?.trim()

const where = (error: WorkerStartError) => {
  const frame = lastFrame(error)
  return frame === undefined ? "" : ` (the traceback ends at ${frame})`
}

/** What went wrong importing the adapter, and the fix, from the exception the worker printed. */
const importFailure = (
  error: WorkerStartError,
  adapter: string,
  pythonPath: ReadonlyArray<string>,
  python: PythonEnvironment.PythonEnvironment
): { readonly detail: string; readonly fix: string } => {
  const [moduleName = adapter, className] = adapter.split(":")
  const top = moduleName.split(".")[0] ?? moduleName
  const exception = exceptionLine(error)
  const path = pythonPath.length === 0 ? "no --python-path given" : `--python-path ${pythonPath.join(delimiter)}`
  const missing = /^ModuleNotFoundError: No module named '([^']+)'/.exec(exception)?.[1]
  if (missing !== undefined && (moduleName === missing || moduleName.startsWith(`${missing}.`))) {
    return {
      detail: `adapter module ${moduleName} is not on the python path (${path}): ${exception}`,
      fix: `pass --python-path the directory that contains ${top}.py or the package directory ${top}/ (in the pool: the \`pythonPath\` option)`
    }
  }
  if (missing !== undefined) {
    return {
      detail: `adapter module ${moduleName} imports ${missing}, which ${python.executable} cannot import: ${exception}`,
      fix: `${PythonEnvironment.installHint(python, [missing])}${where(error)}`
    }
  }
  if (exception.startsWith("AttributeError:") && className !== undefined) {
    return {
      detail: `adapter module ${moduleName} was imported but has no ${className}: ${exception}`,
      fix: `check the class name after the colon in --adapter ${adapter}`
    }
  }
  if (exception.startsWith("LookupError:") || exception.startsWith("TypeError:")) {
    return {
      detail: `${adapter} does not name one BaseAdapter subclass: ${exception}`,
      fix: "name the adapter as module:Class, where Class subclasses snakepit_bridge.BaseAdapter"
    }
  }
  return {
    detail: `adapter ${adapter} could not be imported: ${exception}`,
    fix: `fix the error the import raised${where(error)}`
  }
}

const checkAdapter = (
  options: DoctorOptions,
  python: PythonEnvironment.PythonEnvironment | undefined,
  bridgeFound: boolean,
  pool: ResolvedPoolOptions | undefined
) =>
  Effect.gen(function* () {
    const pythonPath = options.pythonPath ?? []
    const adapter = options.adapter
    if (adapter === undefined) {
      return skip("adapter", "not checked: no --adapter given (--python-path is used only with it)")
    }
    const badDirs = pythonPath.filter((dir) => !isDirectory(dir))
    if (badDirs.length > 0) {
      return fail(
        "adapter",
        `--python-path ${badDirs.join(", ")}: not ${badDirs.length === 1 ? "a directory" : "directories"} (resolved from ${process.cwd()})`,
        `pass --python-path the directory that contains your adapter module (${adapter.split(":")[0]}.py or its package directory)`
      )
    }
    if (python === undefined) return skip("adapter", "not started: no usable Python interpreter (see python)")
    if (!bridgeFound) return skip("adapter", "not started: the worker runtime is missing (see bridge)")
    const startupTimeout = pool?.startupTimeout ?? Duration.seconds(30)
    const { runId, outcome, survivors } = yield* trialWorker(
      {
        id: "doctor-adapter",
        transport: options.transport ?? pool?.transport ?? "local",
        adapter,
        pythonPath: pythonPath.map((dir) => resolve(dir)),
        ...(options.python === undefined ? {} : { python: options.python }),
        startupTimeout,
        ...(pool ? { threadLimits: pool.threadLimits } : {})
      },
      (worker) => worker.describeTools
    )
    if (survivors.length > 0) return survivorsFailure("adapter", runId, survivors)
    if (Either.isLeft(outcome)) {
      const error = outcome.left
      switch (error._tag) {
        case "WorkerStartError": {
          if (error.reason === "adapter_import_failed") {
            const { detail, fix } = importFailure(error, adapter, pythonPath, python)
            return fail("adapter", detail, fix)
          }
          if (error.reason === "adapter_start_failed") {
            return fail(
              "adapter",
              `adapter ${adapter} was imported but raised while starting (its __init__ or on_start): ${exceptionLine(error)}`,
              `fix ${adapter.split(":")[1] ?? "the adapter"}'s start-up${where(error)}; \`snakepit doctor --log-level debug ...\` shows its whole stderr`
            )
          }
          return fail(
            "adapter",
            `${error.message}${lastLines(error.stderrTail, 3) === "" ? "" : `; stderr: ${lastLines(error.stderrTail, 3)}`}`,
            startFix(error, byHand(python.executable, adapter, pythonPath), python.executable, startupTimeout)
          )
        }
        case "ConfigError":
          return fail("adapter", error.message, "fix the setting it names (see config)")
        default:
          return fail(
            "adapter",
            `the adapter's worker started but did not list its tools: ${error.message}`,
            "run `snakepit doctor --log-level debug ...` to see the worker's stderr"
          )
      }
    }
    const { pid, ready, result: tools } = outcome.right
    const from = pythonPath.length === 0 ? "" : ` from ${pythonPath.join(delimiter)}`
    if (tools.length === 0) {
      return warn(
        "adapter",
        `${adapter}${from} started (worker pid ${pid}, ready in ${millis(ready)}) but has no tools`,
        "decorate the methods callers should reach with @tool (from snakepit_bridge import tool)"
      )
    }
    const names = tools.map((t) => t.name)
    return ok(
      "adapter",
      `${adapter}${from}: worker pid ${pid} ready in ${millis(ready)} with ${names.length} ${names.length === 1 ? "tool" : "tools"} (${names.join(", ")}), stopped with nothing left running`
    )
  })

const isDirectory = (path: string): boolean => {
  try {
    return statSync(path).isDirectory()
  } catch {
    return false
  }
}

// ---------------------------------------------------------------------------------------------
// data dir, leftovers
// ---------------------------------------------------------------------------------------------

const checkRegistry = (options: DoctorOptions) =>
  Effect.gen(function* () {
    const source = yield* dataDirSource(options.dataDir)
    const opened = yield* Effect.gen(function* () {
      const registry = yield* Registry
      const dataDir = ok("data-dir", `registry ${registry.databasePath} opened (data dir from ${source})`)
      const report = yield* inspect.pipe(Effect.either)
      if (Either.isLeft(report)) {
        const problem = describeRegistryFailure(report.left)
        return [dataDir, fail("leftovers", problem.detail, problem.fix)] as const
      }
      const { orphans, summary, runs } = report.right
      if (orphans.length > 0) {
        return [
          dataDir,
          fail(
            "leftovers",
            `${count(orphans.length, "orphaned worker process", "orphaned worker processes")} of dead runs: ${describeOrphans(orphans)}`,
            sweepFix(options.dataDir)
          )
        ] as const
      }
      const reused = runs.flatMap((run) => run.processes.filter((p) => p.process === "reused"))
      const suspicious = runs.flatMap((run) =>
        run.processes.filter((p) => p.process === "suspicious").map((p) => `${p.pid} (run ${run.runId})`)
      )
      const recorded = `${count(summary.runs, "run")} recorded, ${summary.liveRuns} live`
      if (reused.length > 0 || suspicious.length > 0) {
        const found = [
          ...(reused.length > 0
            ? [
                `${count(reused.length, "recorded pid")} now ${reused.length === 1 ? "belongs" : "belong"} to other programs: ${reused.map((p) => p.pid).join(", ")}`
              ]
            : []),
          ...(suspicious.length > 0
            ? [
                `${count(suspicious.length, "process", "processes")} Snakepit cannot prove it started ${suspicious.length === 1 ? "carries" : "carry"} a run id on the command line: ${suspicious.join(", ")}`
              ]
            : [])
        ]
        return [
          dataDir,
          warn(
            "leftovers",
            `no orphans (${recorded}); ${found.join("; ")}`,
            `nothing is killed for them (a run id can be copied); \`snakepit sweep${dataDirArgument(options.dataDir)}\` drops stale rows once their runs are dead; look at the suspicious ones with \`ps -o pid,sid,lstart,args -p PID\``
          )
        ] as const
      }
      return [dataDir, ok("leftovers", `no orphaned worker processes (${recorded})`)] as const
    }).pipe(Effect.provide(registryLayer(options.dataDir)), Effect.either)
    if (Either.isRight(opened)) return opened.right
    const problem = describeRegistryFailure(opened.left)
    return [
      fail("data-dir", `${problem.detail} (data dir from ${source})`, problem.fix),
      skip("leftovers", "not checked: the registry cannot be opened (see data-dir)")
    ] as const
  })

// ---------------------------------------------------------------------------------------------
// run
// ---------------------------------------------------------------------------------------------

/**
 * Runs every check, in order, and returns them. Never fails: a problem is a check with status
 * `fail` and a fix. A check that depends on a failed one is `skip`ped (no worker is started
 * without an interpreter). The one worker started is stopped before this returns, and the check
 * fails if any process of it is left.
 */
export const run = (options: DoctorOptions = {}): Effect.Effect<ReadonlyArray<Check>, never, CommandExecutor> =>
  Effect.gen(function* () {
    const checks: Array<Check> = []
    const record = (check: Check) =>
      Effect.zipRight(
        Effect.sync(() => checks.push(check)),
        options.onCheck?.(check) ?? Effect.void
      )
    yield* record(yield* checkNode)
    const config = yield* checkConfig(options)
    yield* record(config.check)
    const transport = options.transport ?? config.pool?.transport ?? "local"
    const python = yield* checkPython(options, transport)
    yield* record(python.check)
    const bridge = yield* checkBridge
    yield* record(bridge.check)
    yield* record(yield* checkLoopback(transport))
    yield* record(yield* checkWorker(options, python.python, bridge.found, config.pool))
    if (options.adapter !== undefined || (options.pythonPath?.length ?? 0) > 0) {
      yield* record(yield* checkAdapter(options, python.python, bridge.found, config.pool))
    }
    for (const check of yield* checkRegistry(options)) yield* record(check)
    return checks
  })

const LABEL: Record<CheckStatus, string> = { ok: "ok", warn: "warn", fail: "FAIL", skip: "skip" }
const NAME_WIDTH = 10

/** One check as text: `ok    python     ...`, plus an indented `fix:` line unless it is ok. */
export const renderCheck = (check: Check): string => {
  const line = `${LABEL[check.status].padEnd(5)} ${check.check.padEnd(NAME_WIDTH)} ${check.detail}`
  return check.fix === null ? line : `${line}\n${" ".repeat(6 + NAME_WIDTH + 1)}fix: ${check.fix}`
}

/** "7 ok, 1 warn, 0 FAIL, 0 skipped". */
export const summaryLine = (checks: ReadonlyArray<Check>): string => {
  const n = (status: CheckStatus) => checks.filter((c) => c.status === status).length
  return `${n("ok")} ok, ${n("warn")} warn, ${n("fail")} FAIL, ${n("skip")} skipped`
}

/**
 * Runs the checks and prints them: one line per check as it completes (with `fix:` lines), or,
 * with `json`, one JSON array of `{check, status, detail, fix}` at the end. Fails with
 * {@link DiagnosticFailure} when any check FAILed.
 */
export const doctor = (
  options: Omit<DoctorOptions, "onCheck"> & { readonly json?: boolean | undefined } = {}
): Effect.Effect<ReadonlyArray<Check>, DiagnosticFailure, CommandExecutor> =>
  Effect.gen(function* () {
    const json = options.json === true
    const checks = yield* run({ ...options, onCheck: json ? undefined : (check) => Console.log(renderCheck(check)) })
    yield* json ? Console.log(JSON.stringify(checks, null, 2)) : Console.log(`\n${summaryLine(checks)}`)
    const failed = checks.filter((c) => c.status === "fail")
    if (failed.length > 0) {
      return yield* new DiagnosticFailure({
        command: "doctor",
        problems: failed.map((c) => `${c.check}: ${c.detail}`)
      })
    }
    return checks
  })

/** `--python PATH`. */
const pythonOption = Options.text("python").pipe(
  Options.withPseudoName("PATH"),
  Options.withDescription(
    "Interpreter to check, as the pool's `python` option would name it. Default: SNAKEPIT_PYTHON, else python3, /usr/bin/python3, python."
  ),
  Options.optional
)

/** `--adapter module:Class`. */
const adapterOption = Options.text("adapter").pipe(
  Options.withPseudoName("module:Class"),
  Options.withDescription(
    "Your adapter, as the pool's `adapter` option names it: the doctor starts one worker with it, lists its tools and stops it, with a fix for each failure."
  ),
  Options.optional
)

/** `--python-path DIR` (repeatable; `:`-separated lists too). */
const pythonPathOption = Options.text("python-path").pipe(
  Options.withPseudoName("DIR"),
  Options.withDescription(
    "A directory holding your adapter's modules, as the pool's `pythonPath` option (repeat it, or separate directories with ':')."
  ),
  Options.repeated
)

/** `--transport local|grpc`. */
const transportOption = Options.choice("transport", ["local", "grpc"]).pipe(
  Options.withDescription(
    "The transport to check for: local (the default; the Python side needs only its standard library) or grpc (needs grpcio and protobuf, and a loopback port). Default: SNAKEPIT_TRANSPORT, else local."
  ),
  Options.optional
)

/** The `doctor` subcommand. */
export const command = Command.make(
  "doctor",
  {
    python: pythonOption,
    adapter: adapterOption,
    pythonPath: pythonPathOption,
    transport: transportOption,
    dataDir: SharedOptions.dataDir,
    json: SharedOptions.json
  },
  ({ python, adapter, pythonPath, transport, dataDir, json }) =>
    Effect.asVoid(
      doctor({
        python: Option.getOrUndefined(python),
        transport: Option.getOrUndefined(transport),
        adapter: Option.getOrUndefined(adapter),
        pythonPath: pythonPath.flatMap((dirs) => dirs.split(delimiter)).filter((dir) => dir !== ""),
        dataDir: Option.getOrUndefined(dataDir),
        json
      })
    )
).pipe(
  Command.withDescription(
    "Check Node, the SNAKEPIT_* environment, the Python interpreter, the worker runtime, a real worker, your own adapter (--adapter), the registry and leftover processes; say what to do about each problem. Exit code 1 when a check FAILs."
  )
)
