#!/usr/bin/env node
// CPU and wall time per call, layer by layer, of echo(64 B), on both transports, with one call in
// flight per process and LAYERS_CONCURRENCY processes (default 1; 2 is the peer row's setup):
//   gRPC   raw           a raw grpc-js client (with the worker's token) to a worker started by hand
//          bridge        BridgeClient.executeTool to the same worker (the Effect client)
//          worker        Worker.executeEncoded of a gRPC worker (typed errors, decoding)
//          pool          Snakepit.execute through a gRPC pool (argument checks, lease, timeout)
//   local  local-raw     raw frames on the socket pair of a local worker started by hand
//          frame-floor   the same frames answered by profile/frame_echo.py (no worker runtime)
//          local-worker  Worker.executeEncoded of a local worker
//          local-pool    Snakepit.execute through a local pool
//   peer   shell         python-shell with bench/peer_echo.py (JSON lines over stdio)
//
//   node bench/profile/layers.mjs [calls per round] [cases,comma,separated] [--profile=DIR]
//
// --profile=DIR (one case only) writes DIR/<case>.cpuprofile, a CPU profile of the measured rounds
// alone (no module loading, no warm-up), for diff.mjs.
// Node CPU is this process's (process.cpuUsage); Python CPU is the worker's own, every thread
// (/proc/<pid>/stat), so the two columns say which side a call's time goes to. The cases take
// turns for LAYERS_ROUNDS rounds (default 5); each figure is the median over the rounds and, in
// brackets, the least (on a loaded machine the least disturbed round says more). Also prints
// the number of calls each case ran (for diff.mjs), and each case's Python pid at the start (for
// py-spy: py-spy record --pid <pid> --nonblocking).
import { spawnSync } from "node:child_process"
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { Session } from "node:inspector/promises"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import { NodeContext } from "@effect/platform-node"
import { Snakepit, SnakepitPool, Worker } from "@snakepit/core"
import { BridgeClient } from "@snakepit/grpc"
import { RunId } from "@snakepit/registry"
import { Effect, Exit, Layer, Logger, LogLevel, ManagedRuntime, Scope } from "effect"
import { workerPython } from "../../scripts/python.mjs"
import {
  grpcRequest,
  MAX_MESSAGE_BYTES,
  rawGrpcEcho,
  spawnGrpcWorker,
  spawnLocalWorker,
  startShells
} from "../baselines.mjs"

/** As bench/run.mjs chooses: the named interpreter resolved to its executable, never a shim. */
const PYTHON = spawnSync(
  process.env.SNAKEPIT_BENCH_PYTHON || workerPython() || "python3",
  ["-c", "import sys; print(sys.executable)"],
  { encoding: "utf8" }
).stdout.trim()
const positional = process.argv.slice(2).filter((a) => !a.startsWith("--"))
const calls = Number(positional[0] ?? 2000)
const only = positional[1]?.split(",")
const profileDir = process.argv.find((a) => a.startsWith("--profile="))?.slice("--profile=".length)
if (profileDir && only?.length !== 1) {
  console.error("layers.mjs: --profile needs exactly one case")
  process.exit(2)
}
const ROUNDS = Number(process.env.LAYERS_ROUNDS || 5)
const PROCS = Number(process.env.LAYERS_CONCURRENCY || 1)
const WARMUP = 300
const PAYLOAD = "x".repeat(64)
const RUN_ID = RunId.forProcess()
const dataDir = mkdtempSync(join(tmpdir(), "snakepit-layers-"))

const quiet = Logger.minimumLogLevel(LogLevel.Warning)
const runtime = ManagedRuntime.make(Layer.merge(quiet, NodeContext.layer))
const scope = await runtime.runPromise(Scope.make())
const inScope = (effect) => runtime.runPromise(Scope.extend(effect, scope))
const releases = []

/** CPU of process `pid` so far (every thread), in µs: { user, system } (clock-tick resolution). */
const TICK_US = 1e6 / Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim() || 100)
const pythonCpu = (pid) => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ")
  return { user: Number(fields[11]) * TICK_US, system: Number(fields[12]) * TICK_US }
}

/** `n` calls spread over `procs` loops, loop l calling `call(l)`; one call in flight per loop. */
const promiseLoop = (call) => async (n) => {
  await Promise.all(
    Array.from({ length: PROCS }, async (_, l) => {
      for (let i = l; i < n; i += PROCS) await call(l)
    })
  )
}
/** The same with an Effect per loop, run in `run` (a runtime's runPromise). */
const effectLoop = (run, effectOf) => (n) =>
  run(
    Effect.forEach(
      Array.from({ length: PROCS }, (_, l) => l),
      (l) =>
        Effect.gen(function* () {
          const effect = effectOf(l)
          for (let i = l; i < n; i += PROCS) yield* effect
        }),
      { concurrency: "unbounded", discard: true }
    )
  )
/** `PROCS` of `start(i)`, started together. */
const each = (start) => Promise.all(Array.from({ length: PROCS }, (_, i) => start(i)))

const startPool = async (transport) => {
  const pool = ManagedRuntime.make(
    SnakepitPool.layer({ size: PROCS, python: PYTHON, dataDir, transport }).pipe(Layer.provide(quiet))
  )
  releases.push(() => pool.dispose())
  const service = await pool.runPromise(Snakepit)
  const workers = await pool.runPromise(service.workers())
  const execute = service.execute("echo", { value: PAYLOAD })
  return {
    pids: workers.map((w) => w.pid),
    loop: effectLoop(
      (e) => pool.runPromise(e),
      () => execute
    )
  }
}

const startWorkers = async (transport) => {
  const workers = await each(() => inScope(Worker.make({ python: PYTHON, runId: RUN_ID, transport, env: {} })))
  const args = await runtime.runPromise(Worker.encodeArgs("echo", { value: PAYLOAD }))
  const calls = workers.map((w) => w.executeEncoded("echo", args, { timeout: "60 seconds" }))
  return {
    pids: workers.map((w) => w.pid),
    loop: effectLoop(
      (e) => runtime.runPromise(e),
      (l) => calls[l]
    )
  }
}

/** Workers started by hand, with `spawn(i)`, stopped at the end. */
const byHand = async (spawn) => {
  const workers = await each(spawn)
  releases.push(() => Promise.all(workers.map((w) => w.stop())))
  return workers
}

/** The gRPC workers started by hand, shared by `raw` and `bridge`. */
let handGrpc
const grpcByHand = () => {
  handGrpc ??= byHand((i) => spawnGrpcWorker(PYTHON, `layers-grpc-${i}`, RUN_ID))
  return handGrpc
}

const CASES = {
  raw: async () => {
    const ws = await grpcByHand()
    return { pids: ws.map((w) => w.pid), loop: promiseLoop((l) => rawGrpcEcho(ws[l], PAYLOAD)) }
  },
  bridge: async () => {
    const ws = await grpcByHand()
    const bridges = await Promise.all(
      ws.map((w) =>
        inScope(BridgeClient.make({ address: w.address, token: w.token, maxMessageBytes: MAX_MESSAGE_BYTES }))
      )
    )
    const request = grpcRequest("echo", { value: PAYLOAD })
    const calls = bridges.map((b) => b.executeTool(request))
    return {
      pids: ws.map((w) => w.pid),
      loop: effectLoop(
        (e) => runtime.runPromise(e),
        (l) => calls[l]
      )
    }
  },
  worker: () => startWorkers("grpc"),
  pool: () => startPool("grpc"),
  "local-raw": async () => {
    const ws = await byHand((i) => spawnLocalWorker(PYTHON, `layers-local-${i}`, RUN_ID))
    return { pids: ws.map((w) => w.pid), loop: promiseLoop((l) => ws[l].call("echo", { value: PAYLOAD })) }
  },
  "frame-floor": async () => {
    const script = join(dirname(fileURLToPath(import.meta.url)), "frame_echo.py")
    const ws = await byHand((i) => spawnLocalWorker(PYTHON, `layers-floor-${i}`, RUN_ID, { script }))
    return { pids: ws.map((w) => w.pid), loop: promiseLoop((l) => ws[l].call("echo", { value: PAYLOAD })) }
  },
  "local-worker": () => startWorkers("local"),
  "local-pool": () => startPool("local"),
  shell: async () => {
    const shells = startShells(PYTHON, PROCS, RUN_ID)
    releases.push(() => shells.close())
    return { pids: shells.pids, loop: promiseLoop((l) => shells.calls[l](PAYLOAD)) }
  }
}

/** CPU so far of every process in `pids`, summed. */
const pythonCpuOf = (pids) =>
  pids.map(pythonCpu).reduce((a, b) => ({ user: a.user + b.user, system: a.system + b.system }))

try {
  const cases = []
  for (const [name, setup] of Object.entries(CASES)) {
    if (only && !only.includes(name)) continue
    const c = await setup()
    console.error(`${name}: python pid ${c.pids.join(", ")}`)
    cases.push([name, c])
  }
  const samples = new Map(cases.map(([name]) => [name, []]))
  for (const [, c] of cases) await c.loop(WARMUP)
  const session = profileDir ? new Session() : undefined
  if (session) {
    session.connect()
    await session.post("Profiler.enable")
    await session.post("Profiler.setSamplingInterval", { interval: 100 })
    await session.post("Profiler.start")
  }
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, c] of cases) {
      const n0 = process.cpuUsage()
      const p0 = pythonCpuOf(c.pids)
      const t0 = performance.now()
      await c.loop(calls)
      const wall = ((performance.now() - t0) * 1000) / calls
      const node = process.cpuUsage(n0)
      const p1 = pythonCpuOf(c.pids)
      samples.get(name).push({
        node: (node.user + node.system) / calls,
        nodeSys: node.system / calls,
        python: (p1.user - p0.user + p1.system - p0.system) / calls,
        pythonSys: (p1.system - p0.system) / calls,
        wall,
        rate: 1e6 / wall
      })
    }
  }
  if (session) {
    const { profile } = await session.post("Profiler.stop")
    mkdirSync(profileDir, { recursive: true })
    writeFileSync(join(profileDir, `${only[0]}.cpuprofile`), JSON.stringify(profile))
    session.disconnect()
  }
  const median = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]
  const col = (xs, key) => {
    const values = xs.map((x) => x[key])
    return `${median(values).toFixed(0).padStart(5)} (${Math.min(...values)
      .toFixed(0)
      .padStart(4)})`
  }
  const best = (xs, key) => {
    const values = xs.map((x) => x[key])
    return `${median(values).toFixed(0).padStart(6)} (${Math.max(...values)
      .toFixed(0)
      .padStart(6)})`
  }
  console.log(
    `concurrency ${PROCS} (${PROCS} process(es), one call in flight each). µs per call, median (least) of ` +
      "the rounds; cpu = user + system, sys = system alone; calls/s median (best)"
  )
  console.log(
    `${"case".padEnd(12)}  ${"node cpu".padEnd(12)}  ${"node sys".padEnd(12)}  ${"python cpu".padEnd(12)}  ` +
      `${"python sys".padEnd(12)}  ${"wall".padEnd(12)}  calls/s`
  )
  for (const [name, xs] of samples) {
    console.log(
      `${name.padEnd(12)}  ${col(xs, "node")}  ${col(xs, "nodeSys")}  ${col(xs, "python")}  ${col(xs, "pythonSys")}  ` +
        `${col(xs, "wall")}  ${best(xs, "rate")}`
    )
  }
  console.log(`calls per case: ${WARMUP + ROUNDS * calls}${profileDir ? ` (profiled: ${ROUNDS * calls})` : ""}`)
} finally {
  for (const release of releases.reverse()) await release()
  await runtime.runPromise(Scope.close(scope, Exit.void))
  await runtime.dispose()
}
