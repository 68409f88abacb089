import { describe, expect, it } from "@effect/vitest"
import { Snakepit, SnakepitPool } from "@snakepit/core"
import { FakeWorkers, SnakepitTest } from "@snakepit/testkit"
import { Duration, Effect, Fiber, TestClock } from "effect"

describe("FakeWorkers", () => {
  it.effect("a worker that never becomes ready fails the pool's start after startupTimeout", () =>
    Effect.gen(function* () {
      const fake = FakeWorkers.make({ startDelay: Duration.infinity })
      const starting = yield* Effect.fork(
        Effect.scoped(SnakepitPool.make({ size: 2, startupTimeout: "5 seconds" }).pipe(Effect.provide(fake.layer)))
      )
      yield* TestClock.adjust("4999 millis")
      expect(starting.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 millis")
      const error = yield* Effect.flip(Fiber.join(starting))
      expect(error._tag).toBe("PoolStartError")
      if (error._tag === "PoolStartError")
        expect(error.causes.map((c) => c.reason)).toEqual(["startup_timeout", "startup_timeout"])
    })
  )

  it.effect("startup latency runs on the clock", () =>
    Effect.gen(function* () {
      const fake = FakeWorkers.make({ startDelay: "3 seconds" })
      const starting = yield* Effect.fork(
        Effect.scoped(SnakepitPool.make({ size: 1 }).pipe(Effect.provide(fake.layer)))
      )
      yield* TestClock.adjust("2 seconds")
      expect(fake.started).toHaveLength(0)
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(starting)
      expect(fake.started).toHaveLength(1)
    })
  )

  it.effect("unknown tools are ToolNotFound listing the scripted ones", () =>
    Effect.gen(function* () {
      const snakepit = yield* Snakepit
      const error = yield* Effect.flip(snakepit.execute("nope"))
      expect(error._tag).toBe("ToolNotFound")
      if (error._tag === "ToolNotFound") expect(error.available).toEqual(["echo", "sleep"])
    }).pipe(Effect.provide(SnakepitTest.layer()))
  )
})
