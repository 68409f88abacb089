/**
 * Streams against real Python workers: order, back-pressure, cancellation, errors mid-stream.
 */
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { RunId } from "@snakepit/registry"
import { Processes } from "@snakepit/testkit"
import { Chunk, Effect, Either, Stream } from "effect"
import { createPool, type SnakepitOptions, SnakepitPool, type SnakepitService, WorkerFactory } from "../src/index.js"

const fixtures = fileURLToPath(new URL("./fixtures/python", import.meta.url))

/** A pool for one test, under its own run id; afterwards no process of that run may be alive. */
const withPool = <A, E>(options: SnakepitOptions, use: (pool: SnakepitService) => Effect.Effect<A, E>) =>
  Effect.gen(function* () {
    const runId = RunId.generate()
    const exit = yield* Effect.scoped(Effect.flatMap(SnakepitPool.make(options), use)).pipe(
      Effect.provide(WorkerFactory.node),
      Effect.provide(RunId.RunId.fixed(runId)),
      Effect.exit
    )
    yield* Processes.awaitRunGone(runId)
    return yield* exit
  })

const floodReport = (pool: SnakepitService) =>
  Effect.map(pool.execute("flood_report"), (r) => r as { produced: number; closed: boolean })

describe("executeStream", () => {
  it.live("delivers a generator's chunks in order", () =>
    withPool({ size: 1 }, (pool) =>
      Effect.gen(function* () {
        const chunks = yield* Stream.runCollect(pool.executeStream("stream_numbers", { count: 5 }))
        expect(Chunk.toReadonlyArray(chunks)).toEqual([{ i: 0 }, { i: 1 }, { i: 2 }, { i: 3 }, { i: 4 }])
        expect((yield* pool.stats()).busy).toBe(0)
      })
    )
  )

  it.live("ending early cancels the RPC, runs the generator's finally, and frees the worker", () =>
    withPool({ size: 1 }, (pool) =>
      Effect.gen(function* () {
        const first = yield* Stream.runCollect(
          pool.executeStream("flood", { count: 200_000, size: 1024 }).pipe(Stream.take(3))
        )
        expect(Chunk.size(first)).toBe(3)
        // The same (only) worker answers: it is back in the pool and healthy.
        const report = yield* Effect.retry(
          Effect.filterOrFail(
            floodReport(pool),
            (r) => r.closed,
            () => new Error("generator not closed yet")
          ),
          { times: 50 }
        )
        expect(report.closed).toBe(true)
        expect(report.produced).toBeLessThan(200_000)
        expect(yield* pool.stats()).toMatchObject({ busy: 0, ready: 1 })
      })
    )
  )

  it.live("back-pressure: a slow consumer throttles the Python producer and host memory stays bounded", () =>
    withPool({ size: 1 }, (pool) =>
      Effect.gen(function* () {
        global.gc?.()
        const before = process.memoryUsage().rss
        let consumed = 0
        let peakRss = before
        yield* pool.executeStream("flood", { count: 200_000, size: 1024 }, { buffer: 16 }).pipe(
          Stream.take(2_000),
          Stream.runForEach(() =>
            Effect.sync(() => {
              consumed++
              if (consumed % 200 === 0) peakRss = Math.max(peakRss, process.memoryUsage().rss)
            }).pipe(Effect.zipRight(Effect.sleep("1 millis")))
          )
        )
        const report = yield* floodReport(pool)
        const ahead = report.produced - consumed
        console.log(
          `[back-pressure] consumed ${consumed}, produced ${report.produced} (ahead ${ahead}), ` +
            `host RSS growth ${((peakRss - before) / 1024 / 1024).toFixed(1)} MB`
        )
        expect(consumed).toBe(2_000)
        // Without back-pressure the producer would be ~198 000 chunks ahead (≈ 200 MB).
        expect(ahead).toBeLessThan(1_000)
        expect(peakRss - before).toBeLessThan(64 * 1024 * 1024)
      })
    )
  )

  it.live("a Python exception mid-stream: the chunks before it, then PythonError", () =>
    withPool({ size: 1, adapter: "stream_faults", pythonPath: [fixtures] }, (pool) =>
      Effect.gen(function* () {
        const seen: Array<unknown> = []
        const outcome = yield* pool.executeStream("numbers_then_fail", { n: 3 }).pipe(
          Stream.runForEach((chunk) => Effect.sync(() => seen.push(chunk))),
          Effect.either
        )
        expect(seen).toEqual([{ i: 0 }, { i: 1 }, { i: 2 }])
        expect(Either.isLeft(outcome) && outcome.left).toMatchObject({ _tag: "PythonError", type: "ValueError" })
        expect(yield* pool.execute("ping")).toMatchObject({ message: "pong" })
      })
    )
  )

  it.live("a worker crash mid-stream: the chunks before it, then WorkerCrashed", () =>
    withPool({ size: 1, adapter: "stream_faults", pythonPath: [fixtures] }, (pool) =>
      Effect.gen(function* () {
        const seen: Array<unknown> = []
        const outcome = yield* pool.executeStream("numbers_then_crash", { n: 2, code: 5 }).pipe(
          Stream.runForEach((chunk) => Effect.sync(() => seen.push(chunk))),
          Effect.either
        )
        expect(seen).toEqual([{ i: 0 }, { i: 1 }])
        expect(Either.isLeft(outcome) && outcome.left).toMatchObject({ _tag: "WorkerCrashed", exitCode: 5 })
        yield* pool.awaitReady()
        expect(yield* pool.execute("ping")).toMatchObject({ message: "pong" })
      })
    )
  )

  it.live("an idle stream times out with CallTimeout", () =>
    withPool({ size: 1 }, (pool) =>
      Effect.gen(function* () {
        const error = yield* Effect.flip(
          Stream.runDrain(
            pool.executeStream("stream_numbers", { count: 3, delay_ms: 5_000 }, { timeout: "300 millis" })
          )
        )
        expect(error._tag).toBe("CallTimeout")
        expect(yield* pool.execute("add", { a: 1, b: 1 })).toBe(2)
      })
    )
  )

  it.live("streams follow sessions and named pools; bad input is typed", () =>
    withPool({ pools: { a: { size: 2 }, b: { size: 1 } } }, (pool) =>
      Effect.gen(function* () {
        const home = ((yield* pool.execute("ping", {}, { session: "s", pool: "a" })) as { pid: number }).pid
        yield* Stream.runDrain(pool.executeStream("stream_numbers", { count: 2 }, { session: "s", pool: "a" }))
        const again = ((yield* pool.execute("ping", {}, { session: "s", pool: "a" })) as { pid: number }).pid
        expect(again).toBe(home)
        const fromB = yield* Stream.runCollect(pool.executeStream("stream_numbers", { count: 1 }, { pool: "b" }))
        expect(Chunk.toReadonlyArray(fromB)).toEqual([{ i: 0 }])
        const unknown = yield* Effect.flip(Stream.runDrain(pool.executeStream("no_such_stream")))
        expect(unknown._tag).toBe("ToolNotFound")
        const bad = yield* Effect.flip(Stream.runDrain(pool.executeStream("stream_numbers", { count: 10n })))
        expect(bad._tag).toBe("InvalidArguments")
        expect(
          (yield* Effect.flip(Stream.runDrain(pool.executeStream("stream_numbers", {}, { pool: "zzz" }))))._tag
        ).toBe("PoolNotFound")
      })
    )
  )
})

describe("PoolClient.stream", () => {
  it.live("is an AsyncIterable; break cancels; failures are the tagged errors", () =>
    Effect.gen(function* () {
      const pool = yield* Effect.promise(() => createPool({ size: 1 }))
      const [worker] = yield* Effect.promise(() => pool.workers())
      yield* Effect.promise(async () => {
        const seen: Array<unknown> = []
        for await (const chunk of pool.stream("flood", { count: 200_000, size: 16 })) {
          seen.push(chunk)
          if (seen.length === 5) break
        }
        expect(seen).toHaveLength(5)
        let report = (await pool.execute("flood_report")) as { closed: boolean }
        for (let i = 0; i < 50 && !report.closed; i++)
          report = (await pool.execute("flood_report")) as { closed: boolean }
        expect(report.closed).toBe(true)
        const failure = await (async () => {
          for await (const _ of pool.stream("no_such_stream")) {
            // never reached
          }
        })().catch((error: unknown) => error)
        expect(failure).toMatchObject({ _tag: "ToolNotFound" })
        await pool.close()
      })
      yield* Processes.awaitGone([worker!.pid])
    })
  )
})
