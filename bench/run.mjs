#!/usr/bin/env node
// Side-by-side benchmarks of Snakepit, per transport (issues 7 and 12). Every figure is a ratio
// against a baseline measured in the same run, the sides taking turns after warm-up.
//
//   npm run bench                 the full suite (about 10 minutes on 2 loaded cores)
//   npm run bench -- --quick      a short version (CI keeps the harness working with it)
//   npm run bench -- --only=overhead,stream   some groups only (the other rows are null)
//   npm run bench -- --only=cluster           session calls through a 3-runner cluster vs a local pool
//
// Writes bench/results/latest.json:
//   { date, quick, machine: { cores, node, python, executable, grpcio, load }, rows: [{ id, snakepit,
//     baseline, against, unit, ratio, target }], notes }
// Exit code: 1 when a benchmark crashes or a worker process survives; a missed target only
// prints MISS.
import { spawn, spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { availableParallelism, cpus, loadavg, tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import { NodeSdk } from "@effect/opentelemetry"
import { BatchSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { SnakepitCluster } from "@snakepit/cluster"
import { NDArray, Snakepit, SnakepitPool } from "@snakepit/core"
import { RunId } from "@snakepit/registry"
import { Duration, Effect, Layer, Logger, LogLevel, ManagedRuntime, Stream } from "effect"
import { freePort, startRunner } from "../examples/cluster/start.mjs"
import { workerPython } from "../scripts/python.mjs"
import {
  bareStarts,
  killAll,
  rawGrpcEcho,
  rawGrpcFlood,
  spawnGrpcWorker,
  spawnLocalWorker,
  startShells
} from "./baselines.mjs"

/**
 * The interpreter every row runs, chosen once: SNAKEPIT_BENCH_PYTHON, else the repository's
 * choice (`workerPython()`: SNAKEPIT_PYTHON, else the project venv), else `python3`, resolved to
 * its `sys.executable`. The pools and every baseline then run that very
 * executable, and no shim (pyenv's, for one) is in any figure.
 */
const choosePython = () => {
  const named = process.env.SNAKEPIT_BENCH_PYTHON || workerPython() || "python3"
  const res = spawnSync(named, ["-c", "import sys; print(sys.executable)"], { encoding: "utf8" })
  const executable = res.status === 0 ? res.stdout.trim() : ""
  if (!executable) {
    console.error(`bench: cannot run ${named}: ${res.error?.message ?? res.stderr}`)
    process.exit(1)
  }
  return executable
}
const PYTHON = choosePython()

const here = dirname(fileURLToPath(import.meta.url))
const argv = process.argv.slice(2)
const QUICK = argv.includes("--quick")
const ONLY = argv
  .find((a) => a.startsWith("--only="))
  ?.slice("--only=".length)
  .split(",")
const PAYLOAD = "x".repeat(64) // the 64-byte string echoed by the call rows
const GROUPS = ["overhead", "tracing", "throughput", "peer", "stream", "startup", "mem", "data", "cluster"]
const unknown = ONLY?.filter((group) => !GROUPS.includes(group)) ?? []
if (unknown.length > 0) {
  console.error(`bench: unknown group(s) ${unknown.join(", ")}; the groups are ${GROUPS.join(", ")}`)
  process.exit(2)
}

// Sizes of the runs. Quick mode keeps every row id, with null where a row is skipped.
const CFG = QUICK
  ? {
      // Warm-ups as long as the full run's: a cold JIT would make the ratios meaningless.
      overhead: { calls: 300, rounds: 3, warmup: 300 },
      tracing: { calls: 300, rounds: 3, warmup: 300 },
      // The default capacity 1 (reported in the notes only) is not measured.
      throughput: { sizes: [2, 8], roundMs: 400, rounds: 2, warmupMs: 200, capacity1: false },
      peer: { processes: 2, roundMs: 500, rounds: 2, warmupMs: 200 },
      stream: { chunks: 5_000, rounds: 1, warmup: 5_000 },
      startup: { sizes: [1, 8], reps: { 1: 1, 8: 1 } }, // startup_32_* and startup_100_* are null
      // 8 workers instead of 32, one measurement each: the per-worker figure is only indicative.
      mem: { workers: 8, reps: 1, marginal: false },
      data: { rounds: 2 },
      cluster: { sessions: 12, calls: 300, rounds: 2, warmup: 300, roundMs: 500, warmupMs: 300 }
    }
  : {
      overhead: { calls: 2000, rounds: 10, warmup: 300 },
      tracing: { calls: 2000, rounds: 10, warmup: 300 },
      throughput: { sizes: [2, 8], roundMs: 1000, rounds: 6, warmupMs: 500, capacity1: true },
      peer: { processes: 2, roundMs: 1000, rounds: 6, warmupMs: 500 },
      stream: { chunks: 100_000, rounds: 2, warmup: 5_000 },
      startup: { sizes: [1, 8, 32, 100], reps: { 1: 5, 8: 3, 32: 2, 100: 1 } },
      mem: { workers: 32, reps: 2, marginal: true },
      data: { rounds: 5 },
      cluster: { sessions: 12, calls: 2000, rounds: 6, warmup: 500, roundMs: 1000, warmupMs: 500 }
    }

const want = (group) => !ONLY || ONLY.includes(group)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const log = (msg) => console.error(`[bench ${((performance.now() - T0) / 1000).toFixed(1)}s] ${msg}`)
const T0 = performance.now()

// ---------------------------------------------------------------------------------------------
// Machine, run ids, scratch space
// ---------------------------------------------------------------------------------------------

const pyInfo = spawnSync(
  PYTHON,
  [
    "-c",
    "import sys; print(sys.version.split()[0])\ntry:\n import grpc, google.protobuf; print(grpc.__version__)\nexcept ImportError: pass"
  ],
  { encoding: "utf8" }
)
if (pyInfo.status !== 0) {
  console.error(`bench: ${PYTHON} does not run:\n${pyInfo.stderr}`)
  process.exit(1)
}
const [pythonVersion, grpcioVersion = null] = pyInfo.stdout.trim().split("\n")
/** The gRPC rows need grpcio and protobuf; without them they are null and a note says why. */
const GRPC = grpcioVersion !== null
const machine = {
  cores: typeof availableParallelism === "function" ? availableParallelism() : cpus().length,
  node: process.version,
  python: pythonVersion,
  executable: PYTHON,
  grpcio: grpcioVersion,
  // The machine is shared: the 1-minute load average when the run started.
  load: Number(loadavg()[0].toFixed(2))
}

/** The run id of the pools' workers (this process's) and of the baseline processes. */
const POOL_RUN_ID = RunId.forProcess()
const BASE_RUN_ID = RunId.generate()
/** Run ids of the child Node processes of the memory and cluster rows (their workers carry those). */
const childRunIds = []
const dataDir = mkdtempSync(join(tmpdir(), "snakepit-bench-"))

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

const percentile = (samples, p) => {
  const sorted = [...samples].sort((a, b) => a - b)
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[rank]
}
const median = (xs) => percentile(xs, 50)

const PY_SHELL = "python-shell"
const RAW_GRPC = "raw grpc-js"
const GRPC_POOL = "gRPC pool"
const UNTRACED = "same pool, untraced"
const LOCAL_POOL_6 = "local pool of 6"
/**
 * Every row: [id, unit, target, baseline]. The target is the bound from the issues' tables (null:
 * the row only reports); latency and startup must stay at or below it, rates at or above.
 */
const ROWS = [
  ["overhead_p50_local", "ms", null, PY_SHELL],
  ["overhead_p99_local", "ms", null, PY_SHELL],
  ["overhead_p50_grpc", "ms", 1.15, RAW_GRPC],
  ["overhead_p99_grpc", "ms", null, RAW_GRPC],
  ["local_vs_grpc_overhead_p50", "ms", 0.35, GRPC_POOL],
  ["traced_p50_local", "ms", 1.25, UNTRACED],
  ["traced_p99_local", "ms", null, UNTRACED],
  ["traced_p50_grpc", "ms", 1.25, UNTRACED],
  ["traced_p99_grpc", "ms", null, UNTRACED],
  ["throughput_pool2_local", "calls/s", null, PY_SHELL],
  ["throughput_pool2_grpc", "calls/s", 0.9, RAW_GRPC],
  ["throughput_pool8_local", "calls/s", null, PY_SHELL],
  ["throughput_pool8_grpc", "calls/s", 0.9, RAW_GRPC],
  ["peer_python_shell_local", "calls/s", 0.5, PY_SHELL],
  ["peer_python_shell_grpc", "calls/s", null, PY_SHELL],
  ["stream_local", "chunks/s", 2, GRPC_POOL],
  ["stream_grpc", "chunks/s", 0.9, RAW_GRPC],
  ["local_vs_grpc_stream", "chunks/s", 2, GRPC_POOL],
  ["startup_1_local", "ms", 1.5, "python -c pass"],
  ["startup_8_local", "ms", null, "python -c pass"],
  ["startup_32_local", "ms", null, "python -c pass"],
  ["startup_100_local", "ms", 1.5, "python -c pass"],
  ["startup_1_grpc", "ms", 1.25, "import grpc"],
  ["startup_8_grpc", "ms", 1.25, "import grpc"],
  ["startup_32_grpc", "ms", 1.25, "import grpc"],
  ["startup_100_grpc", "ms", 1.25, "import grpc"],
  // No baseline: the bound is on the Snakepit figure itself (< 1 MB per worker).
  ["host_mem_per_worker", "MB", 1, "—"],
  // The same data as raw bytes against JSON: a 10 MB float64 array echoed (target: 10x faster),
  // a 100k-row DataFrame returned as Arrow against to_dict("records").
  ["ndarray_10mb_roundtrip", "ms", 0.1, "JSON list"],
  ["dataframe_100k_arrow", "ms", null, "JSON records"],
  // The price of a network hop, a second process and TLS per call: reports.
  ["cluster_session_p50_local", "ms", null, LOCAL_POOL_6],
  ["cluster_session_calls_local", "calls/s", null, LOCAL_POOL_6],
  // kill -9 of a runner until its last session is served elsewhere, against the documented bound.
  ["cluster_failover_local", "ms", 1, "failover bound"]
]
const ROW = new Map(ROWS.map(([id, unit, target, against]) => [id, { unit, target, against }]))
const higherIsBetter = (id) => ROW.get(id).unit.endsWith("/s")

const results = new Map()
const notes = []
const record = (id, snakepit, baseline) => {
  if (!ROW.has(id)) throw new Error(`bench: unknown row ${id}`)
  const round = (x) => (x === null || x === undefined ? null : Number(x.toPrecision(6)))
  const ratio = snakepit != null && baseline != null && baseline !== 0 ? snakepit / baseline : null
  results.set(id, { snakepit: round(snakepit), baseline: round(baseline), ratio: round(ratio) })
}

/** ok / MISS / "" (no target or no figure). */
const verdict = (id, row) => {
  const { target } = ROW.get(id)
  if (target === null) return ""
  if (id === "host_mem_per_worker") return row.snakepit === null ? "" : row.snakepit < target ? "ok" : "MISS"
  if (row.ratio === null) return ""
  return (higherIsBetter(id) ? row.ratio >= target : row.ratio <= target) ? "ok" : "MISS"
}

// ---------------------------------------------------------------------------------------------
// Taking turns
// ---------------------------------------------------------------------------------------------

/**
 * Runs every side once per round, rotating which goes first, so that no side always follows the
 * same one (with two sides: a b, b a, a b, ...).
 */
const rotate = async (rounds, sides, run) => {
  const names = Object.keys(sides)
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < names.length; k++) {
      const name = names[(r + k) % names.length]
      await run(name, sides[name])
    }
  }
}

/**
 * Per-second rates of `sides` over every round, after a warm-up of each. A side is
 * `(amount) => { n, ms }`: it does `amount` of work (milliseconds of calls, chunks of a stream)
 * and says how many it did in how long.
 */
const rates = async ({ rounds, amount, warmup }, sides) => {
  for (const side of Object.values(sides)) await side(warmup)
  const sum = Object.fromEntries(Object.keys(sides).map((name) => [name, { n: 0, ms: 0 }]))
  await rotate(rounds, sides, async (name, side) => {
    const r = await side(amount)
    sum[name].n += r.n
    sum[name].ms += r.ms
  })
  return Object.fromEntries(Object.entries(sum).map(([name, s]) => [name, (s.n * 1000) / s.ms]))
}
/** `rates` over rounds of `roundMs` of calls, after `warmupMs` of them. */
const callRates = ({ rounds, roundMs, warmupMs }, sides) => rates({ rounds, amount: roundMs, warmup: warmupMs }, sides)

/**
 * Runs `f(use)`, where `use(resource, release)` registers a release; every release runs, in
 * reverse, however `f` ends.
 */
const scoped = async (f) => {
  const releases = []
  const use = (resource, release) => {
    releases.push(() => release(resource))
    return resource
  }
  try {
    return await f(use)
  } finally {
    for (const release of releases.reverse()) await release()
  }
}

// ---------------------------------------------------------------------------------------------
// Snakepit: pools as ManagedRuntimes over SnakepitPool.layer
// ---------------------------------------------------------------------------------------------

const openPools = new Set()

const startPool = async (size, extra) => {
  // Info logs (the registry sweep of every pool start) would drown the progress lines.
  const quiet = Logger.minimumLogLevel(LogLevel.Warning)
  const options = { size, python: PYTHON, dataDir, ...extra }
  const runtime = ManagedRuntime.make(Layer.merge(SnakepitPool.layer(options).pipe(Layer.provide(quiet)), quiet))
  openPools.add(runtime)
  const service = await runtime.runPromise(Snakepit)
  return { runtime, service, run: (effect) => runtime.runPromise(effect) }
}

const closePool = async (pool) => {
  await pool.runtime.dispose()
  openPools.delete(pool.runtime)
}

/** A pool of `size` on `transport`, closed with the scope. */
const usePool = async (use, size, transport, extra = {}) =>
  use(await startPool(size, { transport, ...extra }), closePool)

const checkEcho = (value) => {
  if (value !== PAYLOAD) throw new Error(`echo returned ${JSON.stringify(value)?.slice(0, 80)}`)
}

/** `n` sequential echoes through the pool's service, each one's latency appended to `out`. */
const echoes = (pool, n, out) =>
  Effect.gen(function* () {
    for (let i = 0; i < n; i++) {
      const t0 = performance.now()
      const value = yield* pool.service.execute("echo", { value: PAYLOAD })
      const dt = performance.now() - t0
      checkEcho(value)
      out?.push(dt)
    }
  })

/** Latencies of `n` sequential echoes through the pool, appended to `out`. */
const poolLatencies = (pool) => (n, out) => pool.run(echoes(pool, n, out))

/**
 * An OpenTelemetry tracer as an application sets one up (@effect/opentelemetry's NodeSdk, a
 * batching processor), exporting to nowhere: what tracing costs, without an exporter's I/O.
 */
const startTracer = async () => {
  let exported = 0
  const exporter = {
    export: (spans, done) => {
      exported += spans.length
      done({ code: 0 })
    },
    shutdown: () => Promise.resolve()
  }
  const runtime = ManagedRuntime.make(
    NodeSdk.layer(() => ({ resource: { serviceName: "bench" }, spanProcessor: new BatchSpanProcessor(exporter) }))
  )
  const tracer = await runtime.runPromise(Effect.tracer)
  return { tracer, exported: () => exported, close: () => runtime.dispose() }
}

/** `poolLatencies` with every call traced by `tracer` (each call its own trace). */
const tracedLatencies = (pool, tracer) => (n, out) => pool.run(Effect.withTracer(echoes(pool, n, out), tracer))

/** Latencies of `n` sequential echoes through `call`, appended to `out`. */
const promiseLatencies = (call) => async (n, out) => {
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    const value = await call(PAYLOAD)
    const dt = performance.now() - t0
    checkEcho(value)
    out?.push(dt)
  }
}

/** Calls/s of `conc` loops for `ms` through the pool. */
const poolCallsFor = (pool, conc) => (ms) =>
  pool.run(
    Effect.gen(function* () {
      let n = 0
      const t0 = performance.now()
      const end = t0 + ms
      yield* Effect.forEach(
        Array.from({ length: conc }),
        () =>
          Effect.gen(function* () {
            while (performance.now() < end) {
              checkEcho(yield* pool.service.execute("echo", { value: PAYLOAD }))
              n++
            }
          }),
        { concurrency: "unbounded", discard: true }
      )
      return { n, ms: performance.now() - t0 }
    })
  )

/** Calls/s of `conc` async loops for `ms`; loop `l` calls `call(l)` each time. */
const loopCallsFor = (conc, call) => async (ms) => {
  let n = 0
  const t0 = performance.now()
  const end = t0 + ms
  await Promise.all(
    Array.from({ length: conc }, async (_, l) => {
      while (performance.now() < end) {
        checkEcho(await call(l))
        n++
      }
    })
  )
  return { n, ms: performance.now() - t0 }
}

// ---------------------------------------------------------------------------------------------
// Baseline processes
// ---------------------------------------------------------------------------------------------

const stop = (worker) => worker.stop()

/** `n` gRPC workers started by hand, each with its raw client; stopped with the scope. */
const useGrpcWorkers = async (use, n, label) =>
  use(
    await Promise.all(Array.from({ length: n }, (_, i) => spawnGrpcWorker(PYTHON, `base-${label}-${i}`, BASE_RUN_ID))),
    (workers) => Promise.all(workers.map(stop))
  )

/** `n` python-shell processes; closed with the scope. */
const useShells = async (use, n) => use(startShells(PYTHON, n, BASE_RUN_ID), (shells) => shells.close())

// ---------------------------------------------------------------------------------------------
// Process accounting
// ---------------------------------------------------------------------------------------------

/** Processes whose command line carries one of `runIds`. */
const survivors = (runIds) => {
  const found = []
  for (const id of runIds) {
    const res = spawnSync("pgrep", ["-af", id], { encoding: "utf8" })
    for (const line of res.stdout.split("\n").filter(Boolean)) {
      if (!line.includes("pgrep")) found.push(line)
    }
  }
  return found
}

const awaitNoSurvivors = async (runIds, ms = 5000) => {
  const deadline = Date.now() + ms
  let left = survivors(runIds)
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(100)
    left = survivors(runIds)
  }
  return left
}

// ---------------------------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------------------------

const fixed = (x, digits = 3) => (x == null ? "—" : x.toFixed(digits))

/**
 * Latency samples of every side (`(n, samples) => Promise`) after `warmup` calls each, taking
 * turns in `rounds`: `p(side, q)` is a percentile in ms (null without samples), `line` the
 * p50 / p99 of each side for the notes.
 */
const latenciesOf = async (sides, { calls, rounds, warmup }) => {
  for (const side of Object.values(sides)) await side(warmup)
  const samples = Object.fromEntries(Object.keys(sides).map((name) => [name, []]))
  const per = Math.ceil(calls / rounds)
  await rotate(rounds, sides, (name, side) => side(per, samples[name]))
  const p = (name, q) => (samples[name]?.length ? percentile(samples[name], q) : null)
  const line = Object.keys(sides)
    .map((name) => `${name} ${fixed(p(name, 50))} / ${fixed(p(name, 99))}`)
    .join(", ")
  return { p, per, line }
}

/**
 * overhead: sequential echo of 64 bytes at concurrency 1. Four sides take turns in the same
 * rounds: a local pool of 1, python-shell (1 process), a gRPC pool of 1, raw grpc-js against a
 * gRPC worker started by hand. The cross row compares the two pools.
 */
const benchOverhead = () =>
  scoped(async (use) => {
    const { calls, rounds, warmup } = CFG.overhead
    const [local, shells, grpc, raw] = await Promise.all([
      usePool(use, 1, "local"),
      useShells(use, 1),
      GRPC ? usePool(use, 1, "grpc") : undefined,
      GRPC ? useGrpcWorkers(use, 1, "overhead") : undefined
    ])
    const sides = {
      local: poolLatencies(local),
      shell: promiseLatencies(shells.calls[0]),
      ...(GRPC ? { grpc: poolLatencies(grpc), raw: promiseLatencies((v) => rawGrpcEcho(raw[0], v)) } : {})
    }
    const { p, per, line } = await latenciesOf(sides, { calls, rounds, warmup })
    record("overhead_p50_local", p("local", 50), p("shell", 50))
    record("overhead_p99_local", p("local", 99), p("shell", 99))
    record("overhead_p50_grpc", p("grpc", 50), p("raw", 50))
    record("overhead_p99_grpc", p("grpc", 99), p("raw", 99))
    record("local_vs_grpc_overhead_p50", p("local", 50), p("grpc", 50))
    log(`overhead: ${per * rounds} calls each, p50 / p99 ms: ${line}`)
    notes.push(`overhead: echo(64 B), ${per * rounds} calls per side after ${warmup} of warm-up; p50 / p99 ms: ${line}`)
  })

/**
 * tracing: the overhead group's echo through one pool per transport, traced (an OpenTelemetry
 * tracer: the pool's spans, the worker's tool span coming back) and untraced, taking turns in the
 * same rounds on the same pool.
 */
const benchTracing = () =>
  scoped(async (use) => {
    const { calls, rounds, warmup } = CFG.tracing
    const otel = use(await startTracer(), (t) => t.close())
    const [local, grpc] = await Promise.all([usePool(use, 1, "local"), GRPC ? usePool(use, 1, "grpc") : undefined])
    const sides = {
      local: poolLatencies(local),
      localTraced: tracedLatencies(local, otel.tracer),
      ...(GRPC ? { grpc: poolLatencies(grpc), grpcTraced: tracedLatencies(grpc, otel.tracer) } : {})
    }
    const { p, per, line } = await latenciesOf(sides, { calls, rounds, warmup })
    record("traced_p50_local", p("localTraced", 50), p("local", 50))
    record("traced_p99_local", p("localTraced", 99), p("local", 99))
    record("traced_p50_grpc", p("grpcTraced", 50), p("grpc", 50))
    record("traced_p99_grpc", p("grpcTraced", 99), p("grpc", 99))
    log(`tracing: ${per * rounds} calls each, p50 / p99 ms: ${line}; ${otel.exported()} spans exported`)
    notes.push(
      `tracing: echo(64 B), ${per * rounds} calls per side after ${warmup} of warm-up, traced calls exporting ` +
        `3 spans each (the pool's, the worker call's, the Python tool's) through a BatchSpanProcessor; p50 / p99 ms: ${line}`
    )
  })

/**
 * throughput_pool{2,8}_*: concurrency 2x size. Baselines keep two calls in flight at each of
 * `size` processes (loop l on process l % size): python-shell for the local rows, raw grpc-js
 * for the gRPC rows. So the rows' pools run at `capacity: 2`, the same load on the same number of
 * processes; the default capacity 1 takes turns in the same rounds and is reported in the notes
 * (full runs only).
 */
const benchThroughput = async () => {
  for (const size of CFG.throughput.sizes) {
    const conc = 2 * size
    for (const transport of GRPC ? ["local", "grpc"] : ["local"]) {
      await scoped(async (use) => {
        const [pool2, pool1, base] = await Promise.all([
          usePool(use, size, transport, { capacity: 2 }),
          CFG.throughput.capacity1 ? usePool(use, size, transport) : undefined,
          transport === "local"
            ? useShells(use, size).then((s) => (l) => s.calls[l % size](PAYLOAD))
            : useGrpcWorkers(use, size, `tp${size}`).then((w) => (l) => rawGrpcEcho(w[l % size], PAYLOAD))
        ])
        const r = await callRates(CFG.throughput, {
          capacity2: poolCallsFor(pool2, conc),
          ...(pool1 ? { capacity1: poolCallsFor(pool1, conc) } : {}),
          base: loopCallsFor(conc, base)
        })
        const against = transport === "local" ? PY_SHELL : RAW_GRPC
        record(`throughput_pool${size}_${transport}`, r.capacity2, r.base)
        const text =
          `throughput_pool${size}_${transport}: calls/s at concurrency ${conc}, pool capacity 2 ${r.capacity2.toFixed(0)}, ` +
          (r.capacity1 === undefined
            ? "capacity 1 not measured (quick)"
            : `capacity 1 ${r.capacity1.toFixed(0)} (ratio ${(r.capacity1 / r.base).toFixed(2)})`) +
          `, ${against} ${r.base.toFixed(0)}`
        log(text)
        notes.push(text)
      })
    }
  }
}

/**
 * peer_python_shell_*: calls/s at concurrency = processes, one call in flight per process: a pool
 * of each transport against as many python-shell processes, in the same rounds.
 */
const benchPeer = () =>
  scoped(async (use) => {
    const { processes } = CFG.peer
    const [local, grpc, shells] = await Promise.all([
      usePool(use, processes, "local"),
      GRPC ? usePool(use, processes, "grpc") : undefined,
      useShells(use, processes)
    ])
    const r = await callRates(CFG.peer, {
      local: poolCallsFor(local, processes),
      ...(GRPC ? { grpc: poolCallsFor(grpc, processes) } : {}),
      shell: loopCallsFor(processes, (l) => shells.calls[l](PAYLOAD))
    })
    record("peer_python_shell_local", r.local, r.shell)
    record("peer_python_shell_grpc", r.grpc, r.shell)
    const text =
      `peer_python_shell: calls/s of echo(64 B) at concurrency ${processes}, one call in flight per process: ` +
      `local pool ${r.local.toFixed(0)}, gRPC pool ${r.grpc?.toFixed(0) ?? "—"}, ` +
      `${processes} python-shell processes ${r.shell.toFixed(0)}`
    log(text)
    notes.push(text)
  })

/**
 * stream_*: chunks/s of flood(count, 1024) through executeStream of a pool of 1 of each
 * transport, and through a raw grpc-js server stream, in the same rounds. The local row's
 * baseline is the gRPC pool (the target is a multiple of it), so it equals local_vs_grpc_stream.
 */
const benchStream = () =>
  scoped(async (use) => {
    const { chunks, rounds, warmup } = CFG.stream
    const [local, grpc, raw] = await Promise.all([
      usePool(use, 1, "local"),
      GRPC ? usePool(use, 1, "grpc") : undefined,
      GRPC ? useGrpcWorkers(use, 1, "stream") : undefined
    ])
    const viaPool = (pool) => async (count) => {
      const t0 = performance.now()
      const n = await pool.run(
        pool.service.executeStream("flood", { count, size: 1024 }).pipe(
          Stream.runFold(0, (acc, chunk) => {
            if (chunk.length !== 1024) throw new Error("flood: wrong chunk size")
            return acc + 1
          })
        )
      )
      if (n !== count) throw new Error(`stream: ${n} chunks, expected ${count}`)
      return { n, ms: performance.now() - t0 }
    }
    const viaRaw = async (count) => {
      const t0 = performance.now()
      const n = await rawGrpcFlood(raw[0], count, 1024)
      if (n !== count) throw new Error(`raw stream: ${n} chunks, expected ${count}`)
      return { n, ms: performance.now() - t0 }
    }
    const r = await rates(
      { rounds, amount: chunks, warmup },
      { local: viaPool(local), ...(GRPC ? { grpc: viaPool(grpc), raw: viaRaw } : {}) }
    )
    record("stream_local", r.local, r.grpc)
    record("stream_grpc", r.grpc, r.raw)
    record("local_vs_grpc_stream", r.local, r.grpc)
    const text =
      `stream: chunks/s of flood(${chunks} x 1 KB) x ${rounds}: local pool ${r.local.toFixed(0)}, ` +
      `gRPC pool ${r.grpc?.toFixed(0) ?? "—"}, raw grpc-js ${r.raw?.toFixed(0) ?? "—"}`
    log(text)
    notes.push(text)
  })

/** Time from nothing to every worker of an `n`-worker pool ready (default startup batching). */
const poolStartup = async (n, transport) => {
  const t0 = performance.now()
  const pool = await startPool(n, { transport })
  const ms = performance.now() - t0
  let problem
  try {
    const [workers, stats] = await pool.run(Effect.all([pool.service.workers(), pool.service.stats()]))
    const ready = workers.filter((w) => w.state === "ready" || w.state === "busy").length
    if (ready !== n || stats.restarts !== 0 || new Set(workers.map((w) => w.pid)).size !== n) {
      problem = `${ready} of ${n} workers ready, ${stats.restarts} restarts`
    }
  } finally {
    const tc = performance.now()
    await closePool(pool)
    const left = await awaitNoSurvivors([POOL_RUN_ID])
    if (left.length > 0) problem ??= `workers survived closing the pool:\n${left.join("\n")}`
    log(
      `startup ${n} ${transport}: pool ready in ${ms.toFixed(0)} ms, closed in ${(performance.now() - tc).toFixed(0)} ms`
    )
  }
  if (problem) throw new Error(`startup ${n} ${transport}: ${problem}`)
  return ms
}

/** For the diagnosis only (not a row): `n` workers of `transport` spawned by hand at once, to ready. */
const bySelf = async (n, transport) => {
  const t0 = performance.now()
  const spawnOne = transport === "local" ? spawnLocalWorker : spawnGrpcWorker
  const workers = await Promise.all(
    Array.from({ length: n }, (_, i) => spawnOne(PYTHON, `base-start-${i}`, BASE_RUN_ID))
  )
  const ms = performance.now() - t0
  await Promise.all(workers.map(stop))
  return ms
}

/**
 * startup_N_*: time until every worker of an N-worker pool is ready, against N bare starts of the
 * same executable in parallel until all exited: `-c pass` for the local rows, `-c "import grpc"`
 * (today's floor of a gRPC worker) for the gRPC rows. The four take turns.
 */
const benchStartup = async () => {
  // The first pool of each transport resolves the interpreter (a probe); every row here runs
  // after that, as in a host that started a pool before.
  for (const transport of GRPC ? ["local", "grpc"] : ["local"]) await closePool(await startPool(1, { transport }))
  for (const n of CFG.startup.sizes) {
    const sides = {
      local: () => poolStartup(n, "local"),
      pass: () => bareStarts(PYTHON, "pass", n, BASE_RUN_ID),
      ...(GRPC
        ? { grpc: () => poolStartup(n, "grpc"), importGrpc: () => bareStarts(PYTHON, "import grpc", n, BASE_RUN_ID) }
        : {})
    }
    const samples = Object.fromEntries(Object.keys(sides).map((name) => [name, []]))
    await rotate(CFG.startup.reps[n], sides, async (name, side) => {
      samples[name].push(await side())
    })
    const med = (name) => (samples[name]?.length ? median(samples[name]) : null)
    record(`startup_${n}_local`, med("local"), med("pass"))
    record(`startup_${n}_grpc`, med("grpc"), med("importGrpc"))
    const list = (name) => (samples[name]?.length ? samples[name].map((x) => x.toFixed(0)).join(", ") : "—")
    let diagnosis = ""
    if (!QUICK && n <= 8) {
      diagnosis = `; the bare worker command, ${n} at once, to ready: local ${(await bySelf(n, "local")).toFixed(0)} ms`
      if (GRPC) diagnosis += `, gRPC ${(await bySelf(n, "grpc")).toFixed(0)} ms`
    }
    notes.push(
      `startup_${n}: median of ${CFG.startup.reps[n]}, ms: local pool ${list("local")}; python -c pass ${list("pass")}; ` +
        `gRPC pool ${list("grpc")}; python -c "import grpc" ${list("importGrpc")}${diagnosis}; ` +
        `all ${n} workers ready, 0 restarts, none left after close`
    )
  }
}

/**
 * The interpreter of the data rows: SNAKEPIT_BENCH_DATA_PYTHON, else the tests' .test-venvs/data (numpy,
 * pandas, pyarrow from the package index), else the bench's own; null when it lacks them.
 */
const dataPython = () => {
  const candidates = [
    process.env.SNAKEPIT_BENCH_DATA_PYTHON,
    join(here, "..", ".test-venvs", "data", "bin", "python"),
    PYTHON
  ]
  for (const candidate of candidates) {
    if (!candidate) continue
    const res = spawnSync(candidate, ["-c", "import numpy, pandas, pyarrow"], { encoding: "utf8" })
    if (res.status === 0) return candidate
  }
  return null
}

/**
 * ndarray_10mb_roundtrip: a 10 MB float64 array echoed as an NDArray (raw bytes both ways)
 * against the same numbers as a JSON list. dataframe_100k_arrow: a 100k-row DataFrame returned as
 * Arrow against its to_dict("records") as JSON. Medians of turns on one local worker.
 */
const benchData = async () => {
  const python = dataPython()
  if (python === null) {
    notes.push(
      "data: no interpreter with numpy, pandas and pyarrow (SNAKEPIT_BENCH_DATA_PYTHON): the data rows are null"
    )
    return
  }
  const pool = await startPool(1, {
    transport: "local",
    python,
    adapter: "data_tools:DataTools",
    pythonPath: [here],
    callTimeout: "5 minutes",
    maxMessageBytes: 256 * 1024 * 1024
  })
  try {
    const values = new Float64Array((10 * 1024 * 1024) / 8).map((_, i) => i * 1.000001)
    const array = NDArray.of(values)
    const list = Array.from(values)
    const time = async (effect, check) => {
      const t0 = performance.now()
      const out = await pool.run(effect)
      const ms = performance.now() - t0
      check(out)
      return ms
    }
    const samples = { ndarray: [], list: [], arrow: [], records: [] }
    const sides = {
      ndarray: () =>
        time(pool.service.execute("echo", { value: array }), (out) => {
          if (!(out instanceof NDArray) || out.size !== values.length) throw new Error("echo lost the NDArray")
        }),
      list: () =>
        time(pool.service.execute("echo", { value: list }), (out) => {
          if (!Array.isArray(out) || out.length !== list.length) throw new Error("echo lost the list")
        }),
      arrow: () =>
        time(pool.service.execute("frame", { rows: 100_000 }), (out) => {
          if (out?.numRows !== 100_000) throw new Error("frame is not a 100k-row table")
        }),
      records: () =>
        time(pool.service.execute("records", { rows: 100_000 }), (out) => {
          if (out?.length !== 100_000) throw new Error("records are not 100k rows")
        })
    }
    for (const side of Object.values(sides)) await side() // warm-up
    await rotate(CFG.data.rounds, sides, async (name, side) => {
      samples[name].push(await side())
    })
    record("ndarray_10mb_roundtrip", median(samples.ndarray), median(samples.list))
    record("dataframe_100k_arrow", median(samples.arrow), median(samples.records))
    const list_ = (name) => samples[name].map((x) => x.toFixed(0)).join(", ")
    notes.push(
      `data (${python}): 10 MB float64 echo, ms: NDArray ${list_("ndarray")}; JSON list ${list_("list")}. ` +
        `100k-row DataFrame (5 columns) returned, ms: Arrow ${list_("arrow")}; to_dict("records") JSON ${list_("records")}`
    )
  } finally {
    await closePool(pool)
  }
}

/** host_mem_per_worker: RSS of a fresh Node process with N workers minus with 0, over N. */
const benchMem = async () => {
  const n = CFG.mem.workers
  const measure = (workers) =>
    new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ["--expose-gc", join(here, "mem.mjs"), String(workers), dataDir], {
        env: { ...process.env, SNAKEPIT_BENCH_PYTHON: PYTHON },
        stdio: ["ignore", "pipe", "inherit"]
      })
      let out = ""
      child.stdout.on("data", (d) => {
        out += d
      })
      child.once("error", reject)
      child.once("exit", (code) => {
        const line = out.trim().split("\n").pop()
        try {
          const res = JSON.parse(line)
          childRunIds.push(res.runId)
          if (code !== 0) return reject(new Error(`mem.mjs ${workers} exited ${code}`))
          if (res.ready !== workers) return reject(new Error(`mem.mjs ${workers}: only ${res.ready} ready`))
          resolve(res)
        } catch {
          reject(new Error(`mem.mjs ${workers} exited ${code}: ${out}`))
        }
      })
    })
  // Alternate 0 and N (twice in a full run); take the minimum of each.
  const zero = []
  const many = []
  for (let r = 0; r < CFG.mem.reps; r++) {
    zero.push((await measure(0)).rss)
    many.push((await measure(n)).rss)
  }
  const MB = 1024 * 1024
  const perWorker = (Math.min(...many) - Math.min(...zero)) / n / MB
  record("host_mem_per_worker", perWorker, null)
  let marginal = ""
  if (CFG.mem.marginal) {
    const one = (await measure(1)).rss
    marginal =
      `, with 1 ${(one / MB).toFixed(1)} MB; marginal (N - 1)/(N - 1) = ` +
      `${((Math.min(...many) - one) / (n - 1) / MB).toFixed(2)} MB`
  }
  notes.push(
    `host_mem_per_worker: fresh Node (--expose-gc, gc + settle), default transport (local): RSS with ${n} workers ` +
      `${(Math.min(...many) / MB).toFixed(1)} MB, with 0 ${(Math.min(...zero) / MB).toFixed(1)} MB; ` +
      `(N - 0)/N = ${perWorker.toFixed(2)} MB (includes the one-off cost of starting a pool at all)${marginal}. ` +
      "Target: the Snakepit figure itself < 1 MB (no baseline)."
  )
  log(`mem: ${perWorker.toFixed(2)} MB/worker${marginal}`)
}

/**
 * cluster_*: session calls (`echo`, 64 B) through a cluster of three runner processes on
 * loopback, each with a local pool of 2, from this process as a client, against the same calls
 * on a local pool of 6 (same affinity), taking turns in one run; then kill -9 of one runner until
 * every session it held is served again, against the documented failover bound.
 */
const benchCluster = () =>
  scoped(async (use) => {
    const { calls, rounds, roundMs, sessions: sessionCount, warmup, warmupMs } = CFG.cluster
    const dir = use(mkdtempSync(join(tmpdir(), "snakepit-bench-cluster-")), (d) =>
      rmSync(d, { recursive: true, force: true })
    )
    const env = {
      SNAKEPIT_CLUSTER_SECRET: randomBytes(24).toString("hex"),
      SNAKEPIT_CLUSTER_SQLITE: join(dir, "cluster.db"),
      SNAKEPIT_PYTHON: PYTHON,
      SNAKEPIT_SIZE: "2",
      SNAKEPIT_AFFINITY: "strict_queue",
      SNAKEPIT_TRANSPORT: "local",
      SNAKEPIT_DATA_DIR: dir
    }
    const ports = [await freePort(), await freePort(), await freePort()]
    const runners = use(await Promise.all(ports.map((port) => startRunner(port, env))), (rs) =>
      Promise.all(rs.map((r) => r.stop()))
    )
    for (const r of runners) childRunIds.push(r.runId)
    const quiet = Logger.minimumLogLevel(LogLevel.Warning)
    const client = ManagedRuntime.make(
      SnakepitCluster.layerClient({ secret: env.SNAKEPIT_CLUSTER_SECRET }).pipe(
        Layer.provide(SnakepitCluster.sqlite(env.SNAKEPIT_CLUSTER_SQLITE)),
        Layer.provideMerge(quiet)
      )
    )
    openPools.add(client)
    use(client, async (rt) => {
      await rt.dispose()
      openPools.delete(rt)
    })
    const cluster = await client.runPromise(Effect.all({ service: Snakepit, info: SnakepitCluster.SnakepitCluster }))
    // Until each of the three runners holds its final third of the shards.
    for (let i = 0; ; i++) {
      const rs = await client.runPromise(cluster.info.runners)
      if (rs.length === 3 && rs.every((r) => r.shards === cluster.info.options.shards / 3)) break
      if (i > 300) throw new Error("the cluster did not settle within 60 s")
      await sleep(200)
    }
    const pool = await usePool(use, 2 * runners.length, "local", { affinity: "strict_queue" })
    const sessions = Array.from({ length: sessionCount }, (_, i) => `bench-${i}`)
    const sequential = (run, service) => (n, out) =>
      run(
        Effect.gen(function* () {
          for (let i = 0; i < n; i++) {
            const t0 = performance.now()
            const value = yield* service.execute("echo", { value: PAYLOAD }, { session: sessions[i % sessions.length] })
            const dt = performance.now() - t0
            checkEcho(value)
            out?.push(dt)
          }
        })
      )
    const sides = {
      cluster: sequential((e) => client.runPromise(e), cluster.service),
      pool: sequential(pool.run, pool.service)
    }
    for (const side of Object.values(sides)) await side(warmup)
    const samples = { cluster: [], pool: [] }
    const per = Math.ceil(calls / rounds)
    await rotate(rounds, sides, (name, side) => side(per, samples[name]))
    record("cluster_session_p50_local", median(samples.cluster), median(samples.pool))
    log(
      `cluster: sequential session calls p50 ${fixed(median(samples.cluster))} ms vs ` +
        `${fixed(median(samples.pool))} ms (local pool of 6)`
    )

    // Every session busy at once: one loop per session.
    const loops = (run, service) => (ms) =>
      run(
        Effect.gen(function* () {
          let n = 0
          const t0 = performance.now()
          const end = t0 + ms
          yield* Effect.forEach(
            sessions,
            (session) =>
              Effect.gen(function* () {
                while (performance.now() < end) {
                  checkEcho(yield* service.execute("echo", { value: PAYLOAD }, { session }))
                  n++
                }
              }),
            { concurrency: "unbounded", discard: true }
          )
          return { n, ms: performance.now() - t0 }
        })
      )
    const r = await callRates(
      { rounds, roundMs, warmupMs },
      { cluster: loops((e) => client.runPromise(e), cluster.service), pool: loops(pool.run, pool.service) }
    )
    record("cluster_session_calls_local", r.cluster, r.pool)
    log(
      `cluster: ${sessionCount} sessions at once ${r.cluster.toFixed(0)} vs ${r.pool.toFixed(0)} calls/s (local pool of 6)`
    )

    // kill -9 of one runner: time until every session it held is served by the others.
    const pidOf = await client.runPromise(
      Effect.forEach(sessions, (session) => cluster.service.execute("ping", {}, { session }))
    )
    const victim = runners[0]
    const moving = sessions.filter((_, i) => victim.workers.includes(pidOf[i].pid))
    const killedAt = performance.now()
    victim.child.kill("SIGKILL")
    await victim.exited
    await client.runPromise(
      Effect.forEach(
        moving,
        (session) =>
          cluster.service.execute("ping", {}, { session }).pipe(
            Effect.retry({
              while: (e) => e._tag === "SessionWorkerUnavailable" || e._tag === "RunnerUnreachable",
              times: 5
            })
          ),
        { concurrency: "unbounded" }
      )
    )
    const failover = performance.now() - killedAt
    record("cluster_failover_local", failover, Duration.toMillis(cluster.info.failoverBound))
    log(
      `cluster: kill -9 of a runner holding ${moving.length} of ${sessions.length} sessions: all served again ` +
        `after ${failover.toFixed(0)} ms (bound ${Duration.format(cluster.info.failoverBound)})`
    )
    notes.push(
      `cluster: 3 runner processes × 2 workers (local transport) + this process as client, all on ${machine.cores} ` +
        `cores, TLS on loopback; baseline: one local pool of 6 workers, strict_queue affinity, the same ${sessionCount} ` +
        `sessions; sequential p50 ${fixed(median(samples.cluster))} vs ${fixed(median(samples.pool))} ms; ` +
        `${sessionCount} sessions at once ${r.cluster.toFixed(0)} vs ${r.pool.toFixed(0)} calls/s; failover of ` +
        `${moving.length} sessions ${failover.toFixed(0)} ms (bound ${Duration.format(cluster.info.failoverBound)})`
    )
  })

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

const cleanup = async () => {
  await Promise.allSettled([...openPools].map((rt) => rt.dispose()))
  killAll()
}

process.once("SIGINT", () => {
  killAll()
  void Promise.allSettled([...openPools].map((rt) => rt.dispose())).then(() => process.exit(130))
})

const fmt = (x) => {
  if (x === null || x === undefined) return "—"
  const a = Math.abs(x)
  if (a >= 1000) return Math.round(x).toLocaleString("en-US")
  if (a >= 100) return x.toFixed(0)
  if (a >= 10) return x.toFixed(1)
  if (a >= 1) return x.toFixed(2)
  return x.toFixed(3)
}

const table = (rows) => {
  const header = ["row", "snakepit", "baseline", "baseline is", "unit", "ratio", "target", ""]
  const body = rows.map((r) => [
    r.id,
    fmt(r.snakepit),
    fmt(r.baseline),
    r.against,
    r.unit,
    r.ratio === null ? "—" : r.ratio.toFixed(2),
    r.target === null
      ? "report"
      : r.id === "host_mem_per_worker"
        ? `< ${r.target} MB`
        : `${higherIsBetter(r.id) ? "≥" : "≤"} ${r.target}`,
    verdict(r.id, r)
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)))
  const line = (cells) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`
  return [line(header), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...body.map(line)].join("\n")
}

let failed = false
try {
  log(
    `${QUICK ? "quick" : "full"} run; ${machine.cores} cores, load ${machine.load}, node ${machine.node}, ` +
      `python ${machine.python} (${PYTHON}), grpcio ${machine.grpcio ?? "missing"}`
  )
  if (!GRPC) {
    notes.push(`${PYTHON} cannot import grpc and google.protobuf: the gRPC rows and the cross-transport rows are null.`)
    log(notes.at(-1))
  }
  const groups = [
    ["overhead", benchOverhead],
    ["tracing", benchTracing],
    ["throughput", benchThroughput],
    ["peer", benchPeer],
    ["stream", benchStream],
    ["startup", benchStartup],
    ["mem", benchMem],
    ["data", benchData],
    ["cluster", benchCluster]
  ]
  for (const [name, run] of groups) {
    if (!want(name)) continue
    const t0 = performance.now()
    await run()
    log(`${name} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  }
} catch (error) {
  failed = true
  console.error(`bench: FAILED: ${error?.stack ?? error}`)
} finally {
  await cleanup()
}

const left = await awaitNoSurvivors([POOL_RUN_ID, BASE_RUN_ID, ...childRunIds])
if (left.length > 0) {
  failed = true
  console.error(`bench: FAILED: ${left.length} worker process(es) survived:\n${left.join("\n")}`)
  for (const line of left) {
    const pid = Number(line.split(" ")[0])
    if (pid > 0) {
      try {
        process.kill(pid, "SIGKILL")
      } catch {}
    }
  }
}
rmSync(dataDir, { recursive: true, force: true })

const rows = ROWS.map(([id, unit, target, against]) => {
  const r = results.get(id) ?? { snakepit: null, baseline: null, ratio: null }
  return { id, snakepit: r.snakepit, baseline: r.baseline, against, unit, ratio: r.ratio, target }
})
notes.push(
  `load average (1 min): ${machine.load} at the start, ${loadavg()[0].toFixed(2)} at the end, on ${machine.cores} cores`
)
const report = { date: new Date().toISOString(), quick: QUICK, machine, rows, notes }
mkdirSync(join(here, "results"), { recursive: true })
writeFileSync(join(here, "results", "latest.json"), `${JSON.stringify(report, null, 2)}\n`)

console.log(
  `\nSnakepit benchmarks, ${report.date} (${QUICK ? "quick" : "full"}): ${machine.cores} cores, node ${machine.node}, ` +
    `python ${machine.python} (${PYTHON}), grpcio ${machine.grpcio ?? "missing"}\n`
)
console.log(table(rows))
console.log(
  "\nratio = snakepit / baseline (same run). Latency and startup: lower is better (ratio ≤ target); " +
    "calls/s and chunks/s: higher is better (ratio ≥ target)."
)
for (const n of notes) console.log(`- ${n}`)
const misses = rows.filter((r) => verdict(r.id, r) === "MISS").map((r) => r.id)
console.log(
  `\n${misses.length ? `MISS: ${misses.join(", ")}` : "no target missed"}; no worker process left: ${left.length === 0 ? "yes" : "NO"}; ` +
    `${((performance.now() - T0) / 1000).toFixed(1)} s; written to bench/results/latest.json`
)
process.exit(failed ? 1 : 0)
