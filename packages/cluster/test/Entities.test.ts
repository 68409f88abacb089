/**
 * The session entity's behaviour without processes: @effect/cluster's in-memory test client,
 * a recording stand-in for the runner's pool, and the directory on a SQLite file. The moved
 * signal comes once, as an error under strict affinity and as a flag under `hint`.
 */
import { join } from "node:path"
import { Entity, ShardingConfig } from "@effect/cluster"
import { describe, expect, it } from "@effect/vitest"
import { SnakepitCluster } from "@snakepit/cluster"
import { type Affinity, type CallOptions, type SnakepitService, Worker } from "@snakepit/core"
import { Chunk, Context, Duration, Effect, Either, Layer, Stream } from "effect"
import { Directory, layer as directoryLayer } from "../src/internal/directory.js"
import { SessionEntity } from "../src/internal/protocol.js"
import { LocalPool, layerEntities, RunnerIdentity } from "../src/internal/runner.js"
import { tempDir } from "./helpers.js"

/** A pool that records what it was asked and answers with it. */
const recordingPool = () => {
  const seen: Array<{ readonly tool: string; readonly args: unknown; readonly options: CallOptions }> = []
  const unused = Effect.dieMessage("not used by these tests")
  const service: SnakepitService = {
    pools: ["default"],
    execute: (tool, args, options = {}) =>
      Effect.sync(() => {
        seen.push({ tool, args, options })
        return { tool, args }
      }),
    executeStream: (tool, args, options = {}) =>
      Stream.suspend(() => {
        seen.push({ tool, args, options })
        return Stream.make({ i: 0 }, { i: 1 })
      }),
    describeTools: () => Effect.succeed([]),
    stats: () => unused,
    workers: () => unused,
    stopWorker: () => unused,
    restartWorker: () => unused,
    awaitReady: () => unused,
    resize: () => unused,
    drain: () => unused,
    report: () => unused,
    events: Stream.die("not used by these tests")
  }
  return { seen, service }
}

const payload = (tool: string, args: object, sessionMoved = false) => {
  const encoded = Effect.runSync(Worker.encodeArgs(tool, args))
  return {
    tool,
    args: encoded.json,
    blobs: encoded.blobs,
    tagged: encoded.tagged,
    pool: null,
    timeoutMs: 5_000,
    attachments: null,
    sessionMoved
  }
}

const setup = (affinity: Affinity) =>
  Effect.gen(function* () {
    const dir = yield* tempDir
    const context = yield* Layer.build(directoryLayer.pipe(Layer.provide(SnakepitCluster.sqlite(join(dir, "c.db")))))
    const directory = Context.get(context, Directory)
    // "moved" lived on another runner instance before.
    yield* directory.claimSession("moved", { instance: "old-runner", address: "10.0.0.1:34431" })
    const pool = recordingPool()
    const entities = layerEntities({ maxIdleTime: Duration.minutes(1) }).pipe(
      Layer.provide(Layer.succeed(LocalPool, { service: pool.service, affinity: () => affinity })),
      Layer.provide(Layer.succeed(RunnerIdentity, { instance: "this-runner", address: "10.0.0.2:34431" })),
      Layer.provide(Layer.succeedContext(context))
    )
    const clientFor = yield* Entity.makeTestClient(SessionEntity, entities)
    return { clientFor, pool }
  }).pipe(Effect.provide(ShardingConfig.layerDefaults))

describe("the session entity", () => {
  it.scoped("strict affinity: the first call after a move fails with SessionWorkerUnavailable, once", () =>
    Effect.gen(function* () {
      const { clientFor, pool } = yield* setup("strict_queue")
      const moved = yield* clientFor("moved")
      const first = yield* Effect.either(moved.Execute(payload("add", { a: 1, b: 2 })))
      expect(Either.isLeft(first) && first.left).toMatchObject({
        _tag: "SessionWorkerUnavailable",
        session: "moved",
        workerId: "10.0.0.1:34431"
      })
      expect(pool.seen).toEqual([])
      expect(yield* moved.Execute(payload("add", { a: 1, b: 2 }))).toEqual({ tool: "add", args: { a: 1, b: 2 } })
      expect(pool.seen[0]!.options).toMatchObject({ session: "moved" })
      expect(pool.seen[0]!.options.sessionMoved).toBeUndefined()
      // A session never seen elsewhere starts without a signal.
      const fresh = yield* clientFor("fresh")
      expect(yield* fresh.Execute(payload("ping", {}))).toEqual({ tool: "ping", args: {} })
    })
  )

  it.scoped("strict affinity: a stream can be the first call, and carries the signal", () =>
    Effect.gen(function* () {
      const { clientFor } = yield* setup("strict_fail_fast")
      const moved = yield* clientFor("moved")
      const first = yield* Effect.either(
        Stream.runCollect(moved.ExecuteStream({ ...payload("flood", {}), buffer: null }))
      )
      expect(Either.isLeft(first) && first.left._tag).toBe("SessionWorkerUnavailable")
      const second = yield* Stream.runCollect(moved.ExecuteStream({ ...payload("flood", {}), buffer: null }))
      expect(Chunk.toReadonlyArray(second)).toEqual([{ i: 0 }, { i: 1 }])
    })
  )

  it.scoped("hint: the call runs, with the moved flag for the tool, once", () =>
    Effect.gen(function* () {
      const { clientFor, pool } = yield* setup("hint")
      const moved = yield* clientFor("moved")
      yield* moved.Execute(payload("session_get", { key: "k" }))
      yield* moved.Execute(payload("session_get", { key: "k" }))
      expect(pool.seen.map((s) => s.options.sessionMoved === true)).toEqual([true, false])
    })
  )

  it.scoped("a caller's own moved flag and binary arguments reach the pool as the caller gave them", () =>
    Effect.gen(function* () {
      const { clientFor, pool } = yield* setup("hint")
      const fresh = yield* clientFor("fresh")
      const bytes = new Uint8Array([0, 1, 254, 255])
      yield* fresh.Execute(payload("echo", { value: { nested: [bytes] } }, true))
      yield* fresh.Execute(payload("echo", { value: 1 }))
      expect(pool.seen.map((s) => s.options.sessionMoved === true)).toEqual([true, false])
      expect(pool.seen[0]!.args).toEqual({ value: { nested: [bytes] } })
      // Arguments that do not decode are refused typed, before the pool sees them.
      const bad = yield* Effect.flip(fresh.Execute({ ...payload("echo", {}), args: "[1]" }))
      expect(bad).toMatchObject({ _tag: "InvalidArguments", tool: "echo", path: "args" })
      expect(pool.seen).toHaveLength(2)
    })
  )
})
