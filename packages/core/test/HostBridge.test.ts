/**
 * Python calling TypeScript, end to end: host tools served over the local channel or the gRPC
 * host bridge (vitest runs this file once per transport, `SNAKEPIT_TRANSPORT`), errors in both
 * directions, the per-run secret (gRPC) that never reaches a worker's environment; and
 * discovering a pool's Python tools.
 */

import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
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
  type Transport,
  WorkerFactory
} from "../src/index.js"

/** The repository's python/ directory: python/tests holds the fixture adapter used below. */
const pythonDir = fileURLToPath(new URL("../../../python", import.meta.url))
const INSPECTOR = "tests.fixture_host_bridge:BridgeInspector"

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

/** The NUL-separated strings of a /proc file of `pid` (its environment or command line). */
const procStrings = (pid: number, file: "environ" | "cmdline"): ReadonlyArray<string> =>
  readFileSync(`/proc/${pid}/${file}`, "utf8").split("\0")

/** A CallHostTool from a process that is not the worker: the status it gets back. */
const strayCall = (address: string, metadata: Metadata) =>
  Effect.async<number>((resume) => {
    const client = new Proto.HostToolServiceClient(address, credentials.createInsecure(), {
      "grpc.enable_http_proxy": 0
    })
    const request: Proto.CallHostToolRequest = {
      tool: "lookup_user",
      argsJson: Buffer.from('{"id":1}'),
      attachments: {},
      sessionId: "",
      workerId: "",
      blobs: [],
      tagged: false
    }
    client.callHostTool(request, metadata, { deadline: Date.now() + 10_000 }, (error: ServiceError | null) => {
      client.close()
      resume(Effect.succeed(error ? error.code : status.OK))
    })
  })

/** The transport this run's pools use: vitest's projects set it (see vitest.config.ts). */
const transport: Transport = process.env.SNAKEPIT_TRANSPORT === "grpc" ? "grpc" : "local"

describe(`host tools (${transport} transport)`, () => {
  it.live("a Python tool calls a TypeScript tool and gets its result", () =>
    withPool({ size: 1, transport }, (pool) =>
      Effect.gen(function* () {
        expect(yield* pool.execute("call_host", { tool: "lookup_user", args: { id: 7 } })).toEqual({
          id: 7,
          name: "user-7"
        })
      })
    )
  )

  it.live("errors cross with their types and messages", () =>
    withPool({ size: 1, transport }, (pool) =>
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

  it.live("no host-tool credential is in the worker's environment, command line, or its children's", () =>
    withPool({ size: 1, transport, adapter: INSPECTOR, pythonPath: [pythonDir] }, (pool) =>
      Effect.gen(function* () {
        const env = (yield* pool.execute("env", {
          names: ["SNAKEPIT_HOST_BRIDGE", "SNAKEPIT_HOST_SECRET", "SNAKEPIT_WORKER_TOKEN"]
        })) as Record<string, string | null>
        expect(env).toEqual({ SNAKEPIT_HOST_BRIDGE: null, SNAKEPIT_HOST_SECRET: null, SNAKEPIT_WORKER_TOKEN: null })
        const bridge = (yield* pool.execute("bridge_credentials", {})) as {
          readonly bridge: string
          readonly address: string | null
          readonly secret: string | null
        }
        if (transport === "local") {
          // Host tools travel on the worker's own channel: there is no address and no secret.
          expect(bridge).toEqual({ bridge: "ChannelHostBridge", address: null, secret: null })
          return
        }
        expect(bridge.bridge).toBe("GrpcHostBridge")
        expect(bridge.secret).toMatch(/^[0-9a-f]{64}$/)
        const secret = bridge.secret!
        const { pid } = (yield* pool.execute("ping", {})) as { readonly pid: number }
        const { pid: child } = (yield* pool.execute("spawn_child", { seconds: 60 })) as { readonly pid: number }
        for (const who of [pid, child]) {
          for (const file of ["environ", "cmdline"] as const) {
            expect(
              procStrings(who, file).filter((s) => s.includes(secret)),
              `${file} of ${who}`
            ).toEqual([])
          }
        }
      })
    )
  )

  it.live("without host tools, call_host says host tools are unavailable", () =>
    withPool(
      { size: 1, transport },
      (pool) =>
        Effect.gen(function* () {
          const error = yield* Effect.flip(pool.execute("call_host", { tool: "lookup_user", args: { id: 1 } }))
          expect(error).toMatchObject({ _tag: "PythonError", type: "HostToolsUnavailable" })
        }),
      null
    )
  )
})

// gRPC only; it runs in the grpc project's pass over this file.
describe.runIf(transport === "grpc")("the gRPC host bridge", () => {
  it.live("a stray local process that knows the address but not the per-run secret is refused", () =>
    withPool({ size: 1, transport: "grpc", adapter: INSPECTOR, pythonPath: [pythonDir] }, (pool) =>
      Effect.gen(function* () {
        const bridge = (yield* pool.execute("bridge_credentials", {})) as {
          readonly address: string
          readonly secret: string
        }
        expect(bridge.address).toMatch(/^127\.0\.0\.1:\d+$/)
        expect(yield* strayCall(bridge.address, new Metadata())).toBe(status.UNAUTHENTICATED)
        const wrong = new Metadata()
        wrong.set("x-snakepit-secret", "0".repeat(64))
        expect(yield* strayCall(bridge.address, wrong)).toBe(status.UNAUTHENTICATED)
        // The same call with the worker's secret gets through: the refusals were about the secret.
        const right = new Metadata()
        right.set("x-snakepit-secret", bridge.secret)
        expect(yield* strayCall(bridge.address, right)).toBe(status.OK)
      })
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
