import { describe, expect, it } from "@effect/vitest"
import { credentials, Metadata, type ServiceError, status } from "@grpc/grpc-js"
import { Proto } from "@snakepit/grpc"
import { Cause, Context, Data, Deferred, Effect, Exit, Fiber, Layer, Ref, Schema } from "effect"
import { type HostCall, type HostCallOutcome, HostTool, HostTools, type ToolFailureInfo } from "../src/index.js"
import * as Codec from "../src/internal/codec.js"
import * as GrpcHostBridge from "../src/internal/grpc/hostBridge.js"

const request = (tool: string, args: unknown = {}): HostCall => ({ tool, args, session: "", workerId: "w-1" })

/** The decoded result (binary values as Uint8Array), or a thrown test failure naming the failure returned. */
const resultOf = (outcome: HostCallOutcome): unknown => {
  if (outcome._tag !== "Success") throw new Error(`expected a result: ${JSON.stringify(outcome)}`)
  return Codec.decodeTagged(JSON.parse(outcome.value.json), outcome.value.blobs)
}

const errorOf = (outcome: HostCallOutcome): ToolFailureInfo => {
  if (outcome._tag !== "Failure") throw new Error(`expected a failure: ${JSON.stringify(outcome)}`)
  return outcome.failure
}

class UserNotFound extends Schema.TaggedError<UserNotFound>()("UserNotFound", { id: Schema.Number }) {
  override get message() {
    return `no user ${this.id}`
  }
}

class PlainFailure extends Error {}

class Users extends Context.Tag("test/Users")<Users, { readonly lookup: (id: number) => Effect.Effect<string> }>() {}

const lookupUser = HostTool.make({
  name: "lookup_user",
  description: "Finds a user by id",
  parameters: Schema.Struct({ id: Schema.Number, verbose: Schema.optional(Schema.Boolean) }),
  handler: ({ id }) =>
    id === 404
      ? Effect.fail(new UserNotFound({ id }))
      : Effect.flatMap(Users, (users) => users.lookup(id)).pipe(Effect.map((name) => ({ id, name })))
})

const add = HostTool.make({
  name: "add",
  parameters: Schema.Struct({ a: Schema.Int, b: Schema.NumberFromString }),
  handler: ({ a, b }) => Effect.succeed(a + b)
})

const misbehave = HostTool.make({
  name: "misbehave",
  parameters: Schema.Struct({ how: Schema.Literal("die", "throw", "plain", "tagged", "map", "bigint", "void") }),
  handler: ({ how }): Effect.Effect<unknown, PlainFailure | { readonly _tag: "Teapot"; readonly code: number }> => {
    switch (how) {
      case "die":
        return Effect.die(new Error("exploded"))
      case "throw":
        throw new Error("threw synchronously")
      case "plain":
        return Effect.fail(new PlainFailure("plain failure"))
      case "tagged":
        return Effect.fail({ _tag: "Teapot", code: 418 } as const)
      case "map":
        return Effect.succeed(new Map([["k", 1]]))
      case "bigint":
        return Effect.succeed({ n: 1n })
      case "void":
        return Effect.void
    }
  }
})

const UsersLive = Layer.succeed(Users, { lookup: (id) => Effect.succeed(`user-${id}`) })

const ToolsLive = HostTools.layer(lookupUser, add, misbehave).pipe(Layer.provide(UsersLive))

const call = (tool: string, args?: unknown) => Effect.flatMap(HostTools, (tools) => tools.call(request(tool, args)))

describe("HostTool.make", () => {
  it("derives the ToolSpec from a Struct's properties", () => {
    expect(lookupUser.spec.name).toBe("lookup_user")
    expect(lookupUser.spec.description).toBe("Finds a user by id")
    // What workers see of a host tool, and nothing else (host tools never stream).
    expect(Object.keys(lookupUser.spec).sort()).toEqual(["description", "name", "parameters"])
    expect(lookupUser.spec.parameters.map(({ name, type, required }) => ({ name, type, required }))).toEqual([
      { name: "id", type: "number", required: true },
      { name: "verbose", type: "boolean | undefined", required: false }
    ])
    // The encoded side is what a worker sends: NumberFromString takes a string; Int keeps its name.
    expect(add.spec.parameters.map(({ name, type }) => [name, type])).toEqual([
      ["a", "Int"],
      ["b", "string"]
    ])
    expect(add.spec.description).toBe("")
  })

  it("throws on a name that is not an identifier", () => {
    for (const name of ["", "1abc", "has space", "dash-ed", "dotted.name", "naïve"]) {
      expect(
        () => HostTool.make({ name, parameters: Schema.Struct({}), handler: () => Effect.void }),
        JSON.stringify(name)
      ).toThrow(/invalid tool name/)
    }
    expect(HostTool.make({ name: "_ok9", parameters: Schema.Struct({}), handler: () => Effect.void }).name).toBe("_ok9")
  })
})

describe("HostTools", () => {
  it.effect("lists the tools' specs in registration order", () =>
    Effect.gen(function* () {
      const tools = yield* HostTools
      expect(tools.tools.map((t) => t.name)).toEqual(["lookup_user", "add", "misbehave"])
    }).pipe(Effect.provide(ToolsLive))
  )

  it.effect("runs the handler with services from the layer and returns its result as JSON", () =>
    Effect.gen(function* () {
      expect(resultOf(yield* call("lookup_user", { id: 7 }))).toEqual({ id: 7, name: "user-7" })
      expect(resultOf(yield* call("add", { a: 2, b: "40" }))).toBe(42)
      const empty = yield* call("lookup_user", {})
      expect(errorOf(empty).kind).toBe("invalid_arguments")
      expect(errorOf(empty).message).toContain("is missing")
      // No arguments at all is invalid arguments too, not a defect.
      expect(errorOf(yield* call("lookup_user", undefined)).kind).toBe("invalid_arguments")
      expect(resultOf(yield* call("misbehave", { how: "void" }))).toBeNull()
    }).pipe(Effect.provide(ToolsLive))
  )

  it.effect("an unknown tool is tool_not_found with the available tools", () =>
    Effect.gen(function* () {
      const error = errorOf(yield* call("nope", {}))
      expect(error.kind).toBe("tool_not_found")
      expect(error.available).toEqual(["add", "lookup_user", "misbehave"])
      expect(error.message).toContain('"nope"')
    }).pipe(Effect.provide(ToolsLive))
  )

  it.effect("arguments that do not fit the Schema are invalid_arguments, and the handler does not run", () =>
    Effect.gen(function* () {
      const runs = yield* Ref.make(0)
      const counted = HostTool.make({
        name: "counted",
        parameters: Schema.Struct({ id: Schema.Number }),
        handler: () => Ref.update(runs, (n) => n + 1)
      })
      const tools = yield* Effect.provide(HostTools, HostTools.layer(counted))

      const notAnObject = errorOf(yield* tools.call(request("counted", "{not json")))
      expect(notAnObject.kind).toBe("invalid_arguments")
      expect(notAnObject.type).toBe("ParseError")

      const wrongType = errorOf(yield* tools.call(request("counted", { id: "seven" })))
      expect(wrongType.kind).toBe("invalid_arguments")
      expect(wrongType.type).toBe("ParseError")
      expect(wrongType.message).toContain('["id"]')
      expect(wrongType.message).toContain("Expected number")

      const missing = errorOf(yield* tools.call(request("counted", {})))
      expect(missing.message).toContain('["id"]')
      expect(missing.message).toContain("is missing")

      const extra = errorOf(yield* tools.call(request("counted", { id: 1, surprise: true })))
      expect(extra.kind).toBe("invalid_arguments")
      expect(extra.message).toContain('["surprise"]')

      const notObject = errorOf(yield* tools.call(request("counted", [1])))
      expect(notObject.kind).toBe("invalid_arguments")

      expect(yield* Ref.get(runs)).toBe(0)
      expect(resultOf(yield* tools.call(request("counted", { id: 1 })))).toBeNull()
      expect(yield* Ref.get(runs)).toBe(1)
    })
  )

  it.effect("a typed failure is a python_exception-kind error with type = _tag (or class name) and its message", () =>
    Effect.gen(function* () {
      const tagged = errorOf(yield* call("lookup_user", { id: 404 }))
      expect(tagged.kind).toBe("python_exception")
      expect(tagged.type).toBe("UserNotFound")
      expect(tagged.message).toBe("no user 404")

      const plain = errorOf(yield* call("misbehave", { how: "plain" }))
      expect(plain.type).toBe("PlainFailure")
      expect(plain.message).toBe("plain failure")
      expect(plain.traceback).toContain("plain failure")

      const object = errorOf(yield* call("misbehave", { how: "tagged" }))
      expect(object.type).toBe("Teapot")
      expect(object.message).toContain("418")
    }).pipe(Effect.provide(ToolsLive))
  )

  it.effect("a defect (or a handler that throws) is a python_exception-kind error of type Defect", () =>
    Effect.gen(function* () {
      for (const [how, message] of [
        ["die", "exploded"],
        ["throw", "threw synchronously"]
      ] as const) {
        const error = errorOf(yield* call("misbehave", { how }))
        expect(error.kind).toBe("python_exception")
        expect(error.type).toBe("Defect")
        expect(error.message).toBe(message)
        expect(error.traceback).toContain(message)
      }
    }).pipe(Effect.provide(ToolsLive))
  )

  it.effect("a result JSON cannot carry faithfully is an unserializable_result failure", () =>
    Effect.gen(function* () {
      for (const how of ["map", "bigint"] as const) {
        const error = errorOf(yield* call("misbehave", { how }))
        expect(error.kind).toBe("unserializable_result")
        expect(error.type).toBe("UnserializableResult")
        expect(error.message).toContain("not JSON-serialisable")
      }
    }).pipe(Effect.provide(ToolsLive))
  )

  it.live("interrupting a call interrupts the handler", () =>
    Effect.gen(function* () {
      const started = yield* Deferred.make<void>()
      const interrupted = yield* Deferred.make<void>()
      const slow = HostTool.make({
        name: "slow",
        parameters: Schema.Struct({}),
        handler: () =>
          Deferred.succeed(started, undefined).pipe(
            Effect.zipRight(Effect.never),
            Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))
          )
      })
      const tools = yield* Effect.provide(HostTools, HostTools.layer(slow))
      const fiber = yield* Effect.fork(tools.call(request("slow")))
      yield* Deferred.await(started)
      const exit = yield* Fiber.interrupt(fiber)
      expect(Exit.isInterrupted(exit)).toBe(true)
      expect(yield* Deferred.isDone(interrupted)).toBe(true)
    })
  )

  it.effect("the layer requires the handlers' services and captures them when built", () =>
    Effect.gen(function* () {
      class Prefix extends Context.Tag("test/Prefix")<Prefix, string>() {}
      const greet = HostTool.make({
        name: "greet",
        parameters: Schema.Struct({ who: Schema.String }),
        handler: ({ who }) => Effect.map(Prefix, (prefix) => `${prefix} ${who}`)
      })
      const layer: Layer.Layer<HostTools, never, Prefix> = HostTools.layer(greet)
      const tools = yield* Effect.provide(HostTools, layer.pipe(Layer.provide(Layer.succeed(Prefix, "hello"))))
      // Run where Prefix has another value: the layer's captured one wins.
      const response = yield* tools.call(request("greet", { who: "ada" })).pipe(Effect.provideService(Prefix, "bye"))
      expect(resultOf(response)).toBe("hello ada")
    })
  )

  it.effect("two tools with one name make the layer die when built", () =>
    Effect.gen(function* () {
      const one = HostTool.make({ name: "dup", parameters: Schema.Struct({}), handler: () => Effect.succeed(1) })
      const two = HostTool.make({ name: "dup", parameters: Schema.Struct({}), handler: () => Effect.succeed(2) })
      const exit = yield* Effect.exit(Effect.provide(HostTools, HostTools.layer(one, two)))
      expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
      if (Exit.isFailure(exit)) expect(Cause.pretty(exit.cause)).toContain('named "dup"')
    })
  )
})

// Data.TaggedError without a message: type is the tag, message falls back to the fields.
describe("failure rendering", () => {
  it.effect("a Data.TaggedError without a message shows its fields", () =>
    Effect.gen(function* () {
      class Missing extends Data.TaggedError("Missing")<{ readonly key: string }> {}
      const tool = HostTool.make({
        name: "missing",
        parameters: Schema.Struct({}),
        handler: () => Effect.fail(new Missing({ key: "k1" }))
      })
      const tools = yield* Effect.provide(HostTools, HostTools.layer(tool))
      const error = errorOf(yield* tools.call(request("missing")))
      expect(error.type).toBe("Missing")
      expect(error.message).toContain("k1")
    })
  )
})

describe("binary values", () => {
  it.effect("a Uint8Array in the arguments reaches the handler, and one in the result travels as a raw blob", () =>
    Effect.gen(function* () {
      const reverse = HostTool.make({
        name: "reverse",
        parameters: Schema.Struct({ data: Schema.Uint8ArrayFromSelf }),
        handler: ({ data }) => Effect.succeed({ reversed: Uint8Array.from(data).reverse(), size: data.length })
      })
      const tools = yield* Effect.provide(HostTools, HostTools.layer(reverse))
      const outcome = yield* tools.call(request("reverse", { data: Uint8Array.of(0, 1, 255) }))
      if (outcome._tag !== "Success") throw new Error(`expected a result: ${JSON.stringify(outcome)}`)
      // Raw bytes beside the JSON, never base64 or an array of numbers in it.
      expect(outcome.value.tagged).toBe(true)
      expect(outcome.value.blobs.map((b) => [...b])).toEqual([[255, 1, 0]])
      expect(outcome.value.json).not.toContain("255")
      expect(resultOf(outcome)).toEqual({ reversed: Uint8Array.of(255, 1, 0), size: 3 })
    })
  )
})

/** A call over the gRPC host bridge, as a gRPC worker makes it; its response or its status. */
const grpcCall = (address: string, secret: string, req: Partial<Proto.CallHostToolRequest>) =>
  Effect.async<{ readonly response?: Proto.CallHostToolResponse; readonly error?: ServiceError }>((resume) => {
    const client = new Proto.HostToolServiceClient(address, credentials.createInsecure(), {
      "grpc.enable_http_proxy": 0
    })
    const metadata = new Metadata()
    metadata.set("x-snakepit-secret", secret)
    const full: Proto.CallHostToolRequest = {
      tool: "",
      argsJson: Buffer.alloc(0),
      attachments: {},
      sessionId: "",
      workerId: "w-9",
      blobs: [],
      tagged: false,
      ...req
    }
    const inflight = client.callHostTool(full, metadata, { deadline: Date.now() + 10_000 }, (error, response) => {
      client.close()
      resume(Effect.succeed(error ? { error } : { response }))
    })
    return Effect.sync(() => {
      inflight.cancel()
      client.close()
    })
  })

describe("host tools over the gRPC host bridge", () => {
  const bridgeTools = Effect.gen(function* () {
    const runs = yield* Ref.make<ReadonlyArray<unknown>>([])
    const seen = HostTool.make({
      name: "seen",
      parameters: Schema.Struct({
        data: Schema.optional(Schema.Uint8ArrayFromSelf),
        n: Schema.optional(Schema.Number)
      }),
      handler: (args) =>
        Ref.update(runs, (all) => [...all, args]).pipe(
          Effect.as({ echoed: args.data ?? null, bytes: Uint8Array.of(9, 8, 7) })
        )
    })
    const tools = yield* Effect.provide(HostTools, HostTools.layer(seen, lookupUser).pipe(Layer.provide(UsersLive)))
    const server = yield* GrpcHostBridge.serve(tools)
    return { runs, server }
  })

  it.scopedLive("arguments that are not JSON are invalid_arguments, and the handler does not run", () =>
    Effect.gen(function* () {
      const { runs, server } = yield* bridgeTools
      const { response } = yield* grpcCall(server.address, server.secret, {
        tool: "seen",
        argsJson: Buffer.from("{not json")
      })
      expect(response?.outcome?.$case).toBe("error")
      if (response?.outcome?.$case === "error") {
        expect(response.outcome.value.kind).toBe(Proto.ToolError_Kind.INVALID_ARGUMENTS)
        expect(response.outcome.value.message).toContain("not valid")
      }
      // A tagged object naming a blob that is not there is refused the same way.
      const { response: missingBlob } = yield* grpcCall(server.address, server.secret, {
        tool: "seen",
        argsJson: Buffer.from('{"data":{"__snakepit__":"bytes","blob":3}}'),
        tagged: true
      })
      expect(missingBlob?.outcome?.$case === "error" && missingBlob.outcome.value.kind).toBe(
        Proto.ToolError_Kind.INVALID_ARGUMENTS
      )
      expect(yield* Ref.get(runs)).toEqual([])
      // Empty argsJson means {}.
      const { response: empty } = yield* grpcCall(server.address, server.secret, { tool: "seen" })
      expect(empty?.outcome?.$case).toBe("resultJson")
      expect(yield* Ref.get(runs)).toEqual([{}])
    })
  )

  it.scopedLive("binary values cross as raw blobs both ways", () =>
    Effect.gen(function* () {
      const { runs, server } = yield* bridgeTools
      const { response } = yield* grpcCall(server.address, server.secret, {
        tool: "seen",
        argsJson: Buffer.from('{"data":{"__snakepit__":"bytes","blob":0},"n":1}'),
        blobs: [Buffer.from([1, 2, 3])],
        tagged: true
      })
      const [args] = (yield* Ref.get(runs)) as ReadonlyArray<{ readonly data: Uint8Array; readonly n: number }>
      expect(args?.data).toBeInstanceOf(Uint8Array)
      expect([...(args?.data ?? [])]).toEqual([1, 2, 3])
      expect(args?.n).toBe(1)
      if (response?.outcome?.$case !== "resultJson") throw new Error(`expected a result: ${JSON.stringify(response)}`)
      expect(response.tagged).toBe(true)
      const value = Codec.decodeTagged(JSON.parse(response.outcome.value.toString("utf8")), response.blobs) as {
        readonly echoed: Uint8Array
        readonly bytes: Uint8Array
      }
      expect([...value.echoed]).toEqual([1, 2, 3])
      expect([...value.bytes]).toEqual([9, 8, 7])
    })
  )

  it.scopedLive("failures keep their kind, type, message and the available tools", () =>
    Effect.gen(function* () {
      const { server } = yield* bridgeTools
      const { response: unknown } = yield* grpcCall(server.address, server.secret, { tool: "nope" })
      if (unknown?.outcome?.$case !== "error") throw new Error(`expected an error: ${JSON.stringify(unknown)}`)
      expect(unknown.outcome.value.kind).toBe(Proto.ToolError_Kind.TOOL_NOT_FOUND)
      expect(unknown.outcome.value.availableTools).toEqual(["lookup_user", "seen"])
      const { response: failed } = yield* grpcCall(server.address, server.secret, {
        tool: "lookup_user",
        argsJson: Buffer.from('{"id":404}')
      })
      if (failed?.outcome?.$case !== "error") throw new Error(`expected an error: ${JSON.stringify(failed)}`)
      expect(failed.outcome.value).toMatchObject({
        kind: Proto.ToolError_Kind.PYTHON_EXCEPTION,
        type: "UserNotFound",
        message: "no user 404"
      })
      // A wrong secret never reaches a tool.
      const { error } = yield* grpcCall(server.address, "0".repeat(64), { tool: "seen" })
      expect(error?.code).toBe(status.UNAUTHENTICATED)
    })
  )
})
