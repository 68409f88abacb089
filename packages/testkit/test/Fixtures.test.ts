import { describe, expect, it } from "@effect/vitest"
import { Fixtures, Processes } from "@snakepit/testkit"
import { Effect } from "effect"

describe("real-Python fixtures", () => {
  it.live("withPool runs a real pool and proves nothing survives it", () =>
    Effect.gen(function* () {
      const pids = yield* Fixtures.withPool(
        (pool) =>
          Effect.gen(function* () {
            expect(yield* pool.execute("add", { a: 1, b: 2 })).toBe(3)
            const { pid: child } = (yield* pool.execute("spawn_child", { seconds: 600 })) as { pid: number }
            return [...(yield* pool.workers()).map((w) => w.pid), child]
          }),
        { size: 2 }
      )
      expect(pids).toHaveLength(3)
      expect(pids.filter(Processes.isAlive)).toEqual([])
    })
  )

  it.live("withWorker runs one real worker", () =>
    Effect.gen(function* () {
      const pong = yield* Fixtures.withWorker((worker) => worker.execute("ping"))
      expect(pong).toMatchObject({ message: "pong" })
    })
  )
})
