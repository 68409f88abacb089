/**
 * [slow] Churn: start a pool, call it, stop it, twenty times; the OS must show no survivor.
 */
import { describe, expect, it } from "@effect/vitest"
import { RunId } from "@snakepit/registry"
import { Processes } from "@snakepit/testkit"
import { Effect } from "effect"
import { SnakepitPool, WorkerFactory } from "../src/index.js"

describe("[slow] churn", () => {
  it.live(
    "20 cycles of start → call → stop leave zero workers and zero grandchildren",
    () =>
      Effect.gen(function* () {
        const runId = RunId.generate()
        const seen: Array<number> = []
        for (let cycle = 0; cycle < 20; cycle++) {
          yield* Effect.scoped(
            Effect.gen(function* () {
              const pool = yield* SnakepitPool.make({ size: 2 })
              expect(yield* pool.execute("add", { a: cycle, b: 1 })).toBe(cycle + 1)
              const { pid } = (yield* pool.execute("spawn_child", { seconds: 600 })) as { pid: number }
              seen.push(pid, ...(yield* pool.workers()).map((w) => w.pid))
            })
          ).pipe(Effect.provide(WorkerFactory.node), Effect.provide(RunId.RunId.fixed(runId)))
          // Nothing of this cycle may outlive its scope.
          expect(seen.filter(Processes.isAlive)).toEqual([])
        }
        expect(seen).toHaveLength(60)
        expect(Processes.processesOfRun(runId)).toEqual([])
      }),
    120_000
  )
})
