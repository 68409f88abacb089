// Host memory of a pool, measured in a fresh Node process so that nothing else the benchmark
// did is in the figure. Usage: node --expose-gc bench/mem.mjs <workers> [dataDir]
// Prints one JSON line: { workers, rss, heapUsed, external, runId, ready }.
// With 0 workers the same modules are loaded but no pool is started.
import { Snakepit, SnakepitPool } from "@snakepit/core"
import { RunId } from "@snakepit/registry"
import { Effect, ManagedRuntime } from "effect"
import { workerPython } from "../scripts/python.mjs"

// run.mjs passes the executable its own pools use.
const PYTHON = process.env.SNAKEPIT_BENCH_PYTHON ?? workerPython()
const workers = Number(process.argv[2] ?? "0")
const dataDir = process.argv[3]
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const collect = async () => {
  for (let i = 0; i < 3; i++) {
    globalThis.gc?.()
    await sleep(200)
  }
}

let runtime
let ready = 0
try {
  if (workers > 0) {
    runtime = ManagedRuntime.make(
      SnakepitPool.layer({ size: workers, python: PYTHON, ...(dataDir ? { dataDir } : {}) })
    )
    const service = await runtime.runPromise(Snakepit)
    // Every worker serves a few calls, as in a pool in use.
    await runtime.runPromise(
      Effect.forEach(
        Array.from({ length: workers * 4 }, (_, i) => i),
        (i) => service.execute("echo", { value: `warm-${i}` }),
        { concurrency: workers, discard: true }
      )
    )
    ready = (await runtime.runPromise(service.workers())).filter((w) => w.state !== "starting").length
  }
  // Let timers, sockets and buffers settle before measuring.
  await sleep(1500)
  await collect()
  const usage = process.memoryUsage()
  console.log(
    JSON.stringify({
      workers,
      ready,
      rss: usage.rss,
      heapUsed: usage.heapUsed,
      external: usage.external,
      runId: RunId.forProcess()
    })
  )
} finally {
  if (runtime) await runtime.dispose()
}
