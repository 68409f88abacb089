#!/usr/bin/env node
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
// Node CPU and wall time per call, layer by layer, against one Python worker at concurrency 1:
//   raw      a raw grpc-js client
//   bridge   BridgeClient.executeTool (the Effect client)
//   worker   Worker.executeEncoded (typed errors, decoding)
//   pool     Snakepit.execute through a pool of 1 (argument checks, lease, deadline, metrics)
//
//   node bench/profile/layers.mjs [calls per round] [cases,comma,separated]
//
// Prints the median of 5 rounds and the number of calls each case ran (for diff.mjs).
import { performance } from "node:perf_hooks"
import { NodeContext } from "@effect/platform-node"
import { credentials } from "@grpc/grpc-js"
import { Snakepit, SnakepitPool, Worker } from "@snakepit/core"
import { BridgeClient, Proto } from "@snakepit/grpc"
import { RunId } from "@snakepit/registry"
import { Effect, Exit, Layer, Logger, LogLevel, ManagedRuntime, Scope } from "effect"
import { resolveExecutable, workerPython } from "../../scripts/python.mjs"

const PYTHON = resolveExecutable(process.env.SNAKEPIT_BENCH_PYTHON ?? workerPython() ?? "python3")
const calls = Number(process.argv[2] ?? 2000)
const only = process.argv[3]?.split(",")
const ROUNDS = 5
const WARMUP = 300
const PAYLOAD = "x".repeat(64)
const argsJson = Buffer.from(JSON.stringify({ value: PAYLOAD }))
const request = { tool: "echo", argsJson, attachments: {}, sessionId: "", requestId: "" }

const quiet = Logger.minimumLogLevel(LogLevel.Warning)
const runtime = ManagedRuntime.make(
  Layer.merge(
    SnakepitPool.layer({ size: 1, python: PYTHON, dataDir: mkdtempSync(join(tmpdir(), "snakepit-layers-")) }).pipe(
      Layer.provide(quiet)
    ),
    Layer.merge(quiet, NodeContext.layer)
  )
)
const pool = await runtime.runPromise(Snakepit)
const scope = await runtime.runPromise(Scope.make())
try {
  const worker = await runtime.runPromise(
    Worker.make({ python: PYTHON, runId: RunId.forProcess() }).pipe(Scope.extend(scope))
  )
  const bridge = await runtime.runPromise(BridgeClient.make({ address: worker.address }).pipe(Scope.extend(scope)))
  const raw = new Proto.BridgeServiceClient(worker.address, credentials.createInsecure(), {
    "grpc.enable_http_proxy": 0
  })
  const rawCall = () =>
    new Promise((resolve, reject) =>
      raw.executeTool(request, (error, response) =>
        error ? reject(error) : resolve(JSON.parse(response.outcome.value.toString("utf8")))
      )
    )

  const perCall = (n, t0, c0) => {
    const cpu = process.cpuUsage(c0)
    return { cpu: (cpu.user + cpu.system) / n, wall: ((performance.now() - t0) * 1000) / n }
  }
  const promiseLoop = async (n, call) => {
    const c0 = process.cpuUsage()
    const t0 = performance.now()
    for (let i = 0; i < n; i++) await call()
    return perCall(n, t0, c0)
  }
  const effectLoop = (n, effect) =>
    runtime.runPromise(
      Effect.gen(function* () {
        const c0 = process.cpuUsage()
        const t0 = performance.now()
        for (let i = 0; i < n; i++) yield* effect
        return perCall(n, t0, c0)
      })
    )

  const cases = Object.entries({
    raw: (n) => promiseLoop(n, rawCall),
    bridge: (n) => effectLoop(n, bridge.executeTool(request)),
    worker: (n) => effectLoop(n, worker.executeEncoded("echo", argsJson, { timeout: "60 seconds" })),
    pool: (n) => effectLoop(n, pool.execute("echo", { value: PAYLOAD }))
  }).filter(([name]) => !only || only.includes(name))

  const samples = new Map(cases.map(([name]) => [name, []]))
  for (const [, run] of cases) await run(WARMUP)
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, run] of cases) samples.get(name).push(await run(calls))
  }
  const median = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]
  for (const [name, xs] of samples) {
    const cpu = median(xs.map((x) => x.cpu)).toFixed(0)
    const wall = median(xs.map((x) => x.wall)).toFixed(0)
    console.log(`${name.padEnd(7)} cpu ${cpu.padStart(5)} µs/call  wall ${wall.padStart(5)} µs/call`)
  }
  console.log(`calls per case: ${WARMUP + ROUNDS * calls}`)
  raw.close()
} finally {
  await runtime.runPromise(Scope.close(scope, Exit.void))
  await runtime.dispose()
}
