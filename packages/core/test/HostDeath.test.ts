/**
 * The host dies, even by `kill -9`: no worker and no grandchild survives it. The workers
 * notice on their own (stdin EOF, PR_SET_PDEATHSIG) and kill their process groups.
 */
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { Registry } from "@snakepit/registry"
import { Processes } from "@snakepit/testkit"
import { Context, Duration, Effect, Layer } from "effect"
import { SnakepitPool, WorkerFactory } from "../src/index.js"

const hostScript = fileURLToPath(new URL("./fixtures/hosts/pool-host.mjs", import.meta.url))
const fixtures = fileURLToPath(new URL("./fixtures/python", import.meta.url))

/** Starts a host process; killed with SIGKILL when the test's scope closes, whatever happened. */
const startHost = (options: object) => Processes.spawnHost(hostScript, [JSON.stringify(options)])

describe("death of the host", () => {
  it.scopedLive("kill -9 of a ready host: workers and grandchildren are gone within seconds", () =>
    Effect.gen(function* () {
      const host = yield* startHost({ size: 2 })
      const { runId } = yield* host.nextJson<{ runId: string }>()
      const { workers, grandchild } = yield* host.nextJson<{ workers: Array<number>; grandchild: number }>()
      expect(workers.every(Processes.isAlive) && Processes.isAlive(grandchild)).toBe(true)
      host.child.kill("SIGKILL")
      yield* Processes.awaitGone([...workers, grandchild], Duration.seconds(5))
      yield* Processes.awaitRunGone(runId, Duration.seconds(5))
    })
  )

  it.scopedLive("kill -9 of a host during startup: half-started workers and their children are gone", () =>
    Effect.gen(function* () {
      const host = yield* startHost({
        size: 2,
        adapter: "slow_start",
        pythonPath: [fixtures],
        startupTimeout: "60 seconds"
      })
      const { runId } = yield* host.nextJson<{ runId: string }>()
      // Two workers, each with a grandchild started while "loading".
      yield* Processes.awaitCondition(
        "workers and grandchildren started",
        () => Processes.processesOfRun(runId).length >= 4
      )
      const pids = Processes.processesOfRun(runId).map(([pid]) => pid)
      host.child.kill("SIGKILL")
      yield* Processes.awaitGone(pids, Duration.seconds(5))
      expect(Processes.processesOfRun(runId)).toEqual([])
    })
  )

  it.scopedLive("SIGTERM to the host runs the finalizers: workers stop and their registry rows go", () =>
    Effect.gen(function* () {
      const dataDir = mkdtempSync(join(tmpdir(), "snakepit-registry-"))
      const host = yield* startHost({ size: 2, dataDir })
      const { runId } = yield* host.nextJson<{ runId: string }>()
      const { workers, grandchild } = yield* host.nextJson<{ workers: Array<number>; grandchild: number }>()
      const registry = Context.get(yield* Layer.build(Registry.layer({ dataDir, exitHook: false })), Registry)
      expect((yield* registry.workers(runId)).map((w) => w.pid).sort()).toEqual([...workers].sort())
      // No handler of the application's: createPool closes the pool, then the signal ends the process.
      host.child.kill("SIGTERM")
      expect(yield* host.exited()).toEqual({ code: null, signal: "SIGTERM" })
      expect([...workers, grandchild].filter(Processes.isAlive)).toEqual([])
      // Graceful: each worker's row was removed by its finalizer.
      expect(yield* registry.workers(runId)).toEqual([])
    })
  )

  it.scopedLive("after kill -9, the next start's sweep finds nothing left to kill and clears the rows", () =>
    Effect.gen(function* () {
      const dataDir = mkdtempSync(join(tmpdir(), "snakepit-registry-"))
      const host = yield* startHost({ size: 2, dataDir })
      const { runId } = yield* host.nextJson<{ runId: string }>()
      const { workers } = yield* host.nextJson<{ workers: Array<number> }>()
      host.child.kill("SIGKILL")
      yield* Processes.awaitGone(workers, Duration.seconds(5))
      const registry = Context.get(yield* Layer.build(Registry.layer({ dataDir, exitHook: false })), Registry)
      expect((yield* registry.workers(runId)).length).toBe(2)
      // The kernel frees the run's lock once the host's last thread has exited.
      const [run] = yield* registry.runs
      yield* Processes.awaitCondition(
        "the dead host's run lock is free",
        () => !Effect.runSync(registry.liveness(run!)).alive
      )
      const report = yield* registry.sweep()
      expect(report.killed).toEqual([])
      expect(report.runsSwept).toBeGreaterThanOrEqual(1)
      expect(yield* registry.workers(runId)).toEqual([])
    })
  )

  it.scopedLive("two hosts on one data dir: sweeping after one dies leaves the other serving", () =>
    Effect.gen(function* () {
      const dataDir = mkdtempSync(join(tmpdir(), "snakepit-registry-"))
      const a = yield* startHost({ size: 1, dataDir })
      const b = yield* startHost({ size: 1, dataDir })
      yield* a.nextJson()
      yield* b.nextJson()
      const { workers: aWorkers } = yield* a.nextJson<{ workers: Array<number> }>()
      const { workers: bWorkers } = yield* b.nextJson<{ workers: Array<number> }>()
      a.child.kill("SIGKILL")
      yield* Processes.awaitGone(aWorkers, Duration.seconds(5))
      // A third host starts on the same data dir: its startup sweep runs.
      yield* Effect.scoped(
        Effect.gen(function* () {
          const pool = yield* SnakepitPool.make({ size: 1 })
          expect(yield* pool.execute("add", { a: 1, b: 1 })).toBe(2)
        })
      ).pipe(Effect.provide(WorkerFactory.node), Effect.provide(Registry.layer({ dataDir, exitHook: false })))
      expect(bWorkers.every(Processes.isAlive)).toBe(true)
    })
  )
})
