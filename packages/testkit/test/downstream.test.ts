/**
 * How an application tests its own service that depends on Snakepit: only the packages'
 * public exports, fake workers, time on TestClock. docs/testing.md walks through it.
 */
import { describe, expect, it } from "@effect/vitest"
import { PythonError, Snakepit } from "@snakepit/core"
import { FakeWorkers, SnakepitTest } from "@snakepit/testkit"
import { Context, Effect, Fiber, Layer, Schema, TestClock } from "effect"

// ---- the application's code ------------------------------------------------------------

class RecommendationFailed extends Schema.TaggedError<RecommendationFailed>()("RecommendationFailed", {
  user: Schema.String,
  reason: Schema.String
}) {}

/** Recommends items with a Python model; falls back to best-sellers when the model is slow. */
class Recommender extends Context.Tag("app/Recommender")<
  Recommender,
  { readonly recommend: (user: string) => Effect.Effect<ReadonlyArray<string>, RecommendationFailed> }
>() {
  static readonly bestSellers = ["tea", "mug"]
  static readonly layer = Layer.effect(
    Recommender,
    Effect.gen(function* () {
      const snakepit = yield* Snakepit
      return {
        recommend: (user) =>
          snakepit.execute("predict", { user }, { session: user, timeout: "2 seconds" }).pipe(
            Effect.map((items) => items as ReadonlyArray<string>),
            Effect.catchTags({
              CallTimeout: () => Effect.succeed(Recommender.bestSellers),
              QueueTimeout: () => Effect.succeed(Recommender.bestSellers),
              PythonError: (e) => Effect.fail(new RecommendationFailed({ user, reason: `${e.type}: ${e.message}` }))
            }),
            Effect.mapError((e) =>
              e._tag === "RecommendationFailed" ? e : new RecommendationFailed({ user, reason: e._tag })
            )
          )
      }
    })
  )
}

// ---- its tests --------------------------------------------------------------------------

const withModel = (predict: FakeWorkers.FakeTool) =>
  Recommender.layer.pipe(Layer.provideMerge(SnakepitTest.layer({ tools: { predict } })))

describe("an application's tests with @snakepit/testkit", () => {
  it.effect("passes the model's answer through, routed by session", () =>
    Effect.gen(function* () {
      const recommender = yield* Recommender
      expect(yield* recommender.recommend("ada")).toEqual(["book", "lamp"])
      const fake = yield* SnakepitTest
      expect(fake.calls).toEqual([
        { workerId: fake.started[0]!.id, tool: "predict", args: { user: "ada" }, session: "ada" }
      ])
    }).pipe(Effect.provide(withModel(FakeWorkers.tool.succeed(["book", "lamp"]))))
  )

  it.effect("falls back to best-sellers when the model takes longer than 2 seconds", () =>
    Effect.gen(function* () {
      const recommender = yield* Recommender
      const pending = yield* Effect.fork(recommender.recommend("ada"))
      yield* TestClock.adjust("2 seconds")
      expect(yield* Fiber.join(pending)).toEqual(Recommender.bestSellers)
    }).pipe(Effect.provide(withModel(FakeWorkers.tool.delay("10 seconds", ["late"]))))
  )

  it.effect("turns a Python exception into its own error", () =>
    Effect.gen(function* () {
      const recommender = yield* Recommender
      const error = yield* Effect.flip(recommender.recommend("ada"))
      expect(error).toMatchObject({ _tag: "RecommendationFailed", user: "ada", reason: "KeyError: 'ada'" })
    }).pipe(
      Effect.provide(
        withModel(
          FakeWorkers.tool.fail(
            new PythonError({ tool: "predict", type: "KeyError", message: "'ada'", traceback: "", workerId: "w" })
          )
        )
      )
    )
  )

  it.effect("a crash mid-call is reported, and the next call is served by the replacement", () =>
    Effect.gen(function* () {
      const recommender = yield* Recommender
      const pending = yield* Effect.fork(Effect.flip(recommender.recommend("ada")))
      yield* TestClock.adjust("100 millis")
      expect((yield* Fiber.join(pending)).reason).toBe("WorkerCrashed")
      yield* TestClock.adjust("1 second") // the restart backoff
      const fake = yield* SnakepitTest
      expect(fake.started).toHaveLength(2)
    }).pipe(Effect.provide(withModel(FakeWorkers.tool.crash("100 millis"))))
  )
})
