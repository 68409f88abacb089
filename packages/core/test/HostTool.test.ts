import { describe, expect, it } from "@effect/vitest"
import { Proto } from "@snakepit/grpc"
import { Cause, Context, Data, Deferred, Effect, Exit, Fiber, Layer, Ref, Schema } from "effect"
import { HostTool, HostTools } from "../src/index.js"

const Kind = Proto.ToolError_Kind

const request = (tool: string, args: unknown = {}): Proto.CallHostToolRequest => ({
  tool,
  argsJson: Buffer.from(typeof args === "string" ? args : JSON.stringify(args)),
  attachments: {},
  sessionId: "",
  workerId: "w-1"
})

/** The decoded JSON result, or a thrown test failure naming the error the call returned. */
const resultOf = (response: Proto.CallHostToolResponse): unknown => {
  if (response.outcome?.$case !== "resultJson") throw new Error(`expected a result: ${JSON.stringify(response)}`)
  return JSON.parse(response.outcome.value.toString("utf8"))
}

const errorOf = (response: Proto.CallHostToolResponse): Proto.ToolError => {
  if (response.outcome?.$case !== "error") throw new Error(`expected an error: ${JSON.stringify(response)}`)
  return response.outcome.value
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
    expect(lookupUser.spec.streaming).toBe(false)
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
      // Empty argsJson means {}.
      const empty = yield* Effect.flatMap(HostTools, (tools) =>
        tools.call({ ...request("lookup_user"), argsJson: Buffer.alloc(0) })
      )
      expect(errorOf(empty).kind).toBe(Kind.INVALID_ARGUMENTS)
      expect(errorOf(empty).message).toContain("is missing")
      expect(resultOf(yield* call("misbehave", { how: "void" }))).toBeNull()
    }).pipe(Effect.provide(ToolsLive))
  )

  it.effect("an unknown tool is TOOL_NOT_FOUND with the available tools", () =>
    Effect.gen(function* () {
      const error = errorOf(yield* call("nope", {}))
      expect(error.kind).toBe(Kind.TOOL_NOT_FOUND)
      expect(error.availableTools).toEqual(["add", "lookup_user", "misbehave"])
      expect(error.message).toContain('"nope"')
    }).pipe(Effect.provide(ToolsLive))
  )

  it.effect(
    "arguments that are not JSON or do not fit the Schema are INVALID_ARGUMENTS, and the handler does not run",
    () =>
      Effect.gen(function* () {
        const runs = yield* Ref.make(0)
        const counted = HostTool.make({
          name: "counted",
          parameters: Schema.Struct({ id: Schema.Number }),
          handler: () => Ref.update(runs, (n) => n + 1)
        })
        const tools = yield* Effect.provide(HostTools, HostTools.layer(counted))

        const notJson = errorOf(yield* tools.call(request("counted", "{not json")))
        expect(notJson.kind).toBe(Kind.INVALID_ARGUMENTS)
        expect(notJson.message).toContain("not valid JSON")

        const wrongType = errorOf(yield* tools.call(request("counted", { id: "seven" })))
        expect(wrongType.kind).toBe(Kind.INVALID_ARGUMENTS)
        expect(wrongType.type).toBe("ParseError")
        expect(wrongType.message).toContain('["id"]')
        expect(wrongType.message).toContain("Expected number")

        const missing = errorOf(yield* tools.call(request("counted", {})))
        expect(missing.message).toContain('["id"]')
        expect(missing.message).toContain("is missing")

        const extra = errorOf(yield* tools.call(request("counted", { id: 1, surprise: true })))
        expect(extra.kind).toBe(Kind.INVALID_ARGUMENTS)
        expect(extra.message).toContain('["surprise"]')

        const notObject = errorOf(yield* tools.call(request("counted", [1])))
        expect(notObject.kind).toBe(Kind.INVALID_ARGUMENTS)

        expect(yield* Ref.get(runs)).toBe(0)
        expect(resultOf(yield* tools.call(request("counted", { id: 1 })))).toBeNull()
        expect(yield* Ref.get(runs)).toBe(1)
      })
  )

  it.effect("a typed failure is a PYTHON_EXCEPTION-kind error with type = _tag (or class name) and its message", () =>
    Effect.gen(function* () {
      const tagged = errorOf(yield* call("lookup_user", { id: 404 }))
      expect(tagged.kind).toBe(Kind.PYTHON_EXCEPTION)
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

  it.effect("a defect (or a handler that throws) is a PYTHON_EXCEPTION-kind error of type Defect", () =>
    Effect.gen(function* () {
      for (const [how, message] of [
        ["die", "exploded"],
        ["throw", "threw synchronously"]
      ] as const) {
        const error = errorOf(yield* call("misbehave", { how }))
        expect(error.kind).toBe(Kind.PYTHON_EXCEPTION)
        expect(error.type).toBe("Defect")
        expect(error.message).toBe(message)
        expect(error.traceback).toContain(message)
      }
    }).pipe(Effect.provide(ToolsLive))
  )

  it.effect("a result JSON cannot carry faithfully is an UnserializableResult error", () =>
    Effect.gen(function* () {
      for (const how of ["map", "bigint"] as const) {
        const error = errorOf(yield* call("misbehave", { how }))
        expect(error.kind).toBe(Kind.UNSERIALIZABLE_RESULT)
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
