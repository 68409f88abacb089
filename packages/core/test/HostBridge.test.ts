/**
 * Python calling TypeScript, end to end: host tools served by the pool's bridge, errors in
 * both directions, the per-run secret; and discovering a pool's Python tools.
 */

import { describe, expect, it } from "@effect/vitest"
import { credentials, Metadata, type ServiceError, status } from "@grpc/grpc-js"
import { Proto } from "@snakepit/grpc"
import { RunId } from "@snakepit/registry"
import { Processes } from "@snakepit/testkit"
import { Effect, type Layer, Schema } from "effect"
import {
  HostTool,
  HostTools,
  type SnakepitOptions,
  SnakepitPool,
  type SnakepitService,
  WorkerFactory
} from "../src/index.js"

class UserNotFound extends Schema.TaggedError<UserNotFound>()("UserNotFound", { id: Schema.Number }) {
  override get message() {
    return `no user ${this.id}`
  }
}

const lookupUser = HostTool.make({
  name: "lookup_user",
  description: "Finds a user by id.",
  parameters: Schema.Struct({ id: Schema.Number }),
  handler: ({ id }) => (id === 404 ? Effect.fail(new UserNotFound({ id })) : Effect.succeed({ id, name: `user-${id}` }))
})

const withPool = <A, E>(
  options: SnakepitOptions,
  use: (pool: SnakepitService) => Effect.Effect<A, E>,
  hostTools: Layer.Layer<HostTools> | null = HostTools.layer(lookupUser)
) =>
  Effect.gen(function* () {
    const runId = RunId.generate()
    const build = Effect.scoped(Effect.flatMap(SnakepitPool.make(options), use)).pipe(
      Effect.provide(WorkerFactory.node),
      Effect.provide(RunId.RunId.fixed(runId))
    )
    const exit = yield* (hostTools ? Effect.provide(build, hostTools) : build).pipe(Effect.exit)
    yield* Processes.awaitRunGone(runId)
    return yield* exit
  })

describe("host tools", () => {
  it.live("a Python tool calls a TypeScript tool and gets its result", () =>
    withPool({ size: 1 }, (pool) =>
      Effect.gen(function* () {
        expect(yield* pool.execute("call_host", { tool: "lookup_user", args: { id: 7 } })).toEqual({
          id: 7,
          name: "user-7"
        })
      })
    )
  )

  it.live("errors cross with their types and messages", () =>
    withPool({ size: 1 }, (pool) =>
      Effect.gen(function* () {
        const invalid = yield* Effect.flip(pool.execute("call_host", { tool: "lookup_user", args: { id: "seven" } }))
        expect(invalid).toMatchObject({ _tag: "PythonError", type: "HostToolError" })
        expect(invalid.message).toContain("ParseError")
        const failed = yield* Effect.flip(pool.execute("call_host", { tool: "lookup_user", args: { id: 404 } }))
        expect(failed).toMatchObject({ _tag: "PythonError", type: "HostToolError" })
        expect(failed.message).toContain("UserNotFound: no user 404")
        const unknown = yield* Effect.flip(pool.execute("call_host", { tool: "nope", args: {} }))
        expect(unknown.message).toContain("lookup_user")
        // The pool keeps serving.
        expect(yield* pool.execute("add", { a: 1, b: 2 })).toBe(3)
      })
    )
  )

  it.live("a call without the per-run secret is refused", () =>
    withPool({ size: 1 }, (pool) =>
      Effect.gen(function* () {
        const env = (yield* pool.execute("env", { names: ["SNAKEPIT_HOST_BRIDGE", "SNAKEPIT_HOST_SECRET"] })) as Record<
          string,
          string
        >
        expect(env.SNAKEPIT_HOST_BRIDGE).toMatch(/^127\.0\.0\.1:\d+$/)
        expect(env.SNAKEPIT_HOST_SECRET).toMatch(/^[0-9a-f]{64}$/)
        const call = (metadata: Metadata) =>
          Effect.async<number>((resume) => {
            const client = new Proto.HostToolServiceClient(env.SNAKEPIT_HOST_BRIDGE!, credentials.createInsecure())
            client.callHostTool(
              { tool: "lookup_user", argsJson: Buffer.from('{"id":1}'), attachments: {}, sessionId: "", workerId: "" },
              metadata,
              (error: ServiceError | null) => {
                client.close()
                resume(Effect.succeed(error ? error.code : status.OK))
              }
            )
          })
        expect(yield* call(new Metadata())).toBe(status.UNAUTHENTICATED)
        const wrong = new Metadata()
        wrong.set("x-snakepit-secret", "0".repeat(64))
        expect(yield* call(wrong)).toBe(status.UNAUTHENTICATED)
        const right = new Metadata()
        right.set("x-snakepit-secret", env.SNAKEPIT_HOST_SECRET!)
        expect(yield* call(right)).toBe(status.OK)
      })
    )
  )

  it.live("without host tools, call_host says the bridge is not configured", () =>
    withPool(
      { size: 1 },
      (pool) =>
        Effect.gen(function* () {
          const error = yield* Effect.flip(pool.execute("call_host", { tool: "lookup_user", args: { id: 1 } }))
          expect(error).toMatchObject({ _tag: "PythonError", type: "HostToolsUnavailable" })
        }),
      null
    )
  )
})

describe("tool discovery", () => {
  it.live("lists each pool's Python tools with parameters and descriptions", () =>
    withPool({ pools: { a: { size: 1 }, b: { size: 1 } } }, (pool) =>
      Effect.gen(function* () {
        const tools = yield* pool.describeTools("b")
        const byName = new Map(tools.map((t) => [t.name, t]))
        expect([...byName.keys()]).toEqual(expect.arrayContaining(["ping", "add", "flood", "call_host"]))
        expect(byName.get("add")!.parameters.map((p) => [p.name, p.required])).toEqual([
          ["a", true],
          ["b", true]
        ])
        expect(byName.get("fail")!.parameters).toContainEqual(
          expect.objectContaining({ name: "type", required: false, default: "ValueError" })
        )
        expect(byName.get("stream_numbers")!.streaming).toBe(true)
        expect(byName.get("add")!.streaming).toBe(false)
        expect(byName.get("ping")!.description.length).toBeGreaterThan(0)
        expect((yield* Effect.flip(pool.describeTools("zzz")))._tag).toBe("PoolNotFound")
      })
    )
  )
})
