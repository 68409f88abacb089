/**
 * Typed tools: a Python tool's name with a Schema for its arguments and one for its result, so
 * that a call is `Effect<Result, CallError | ParseError>` instead of `unknown` in, `unknown` out.
 * Write them by hand with {@link make}, or let `snakepit codegen` write them (and a service
 * whose methods are the tools) from the adapter's annotations.
 *
 * The result is decoded with its Schema at run time: a Python tool that returns something else
 * is a `ParseError` naming the path of the mismatch, and the pool keeps serving.
 *
 * @since 0.3.0
 */
import type { Table } from "apache-arrow"
import { Effect, type ParseResult, Schema, Stream } from "effect"
import type { CallError } from "./errors.js"
import * as Arrow from "./internal/arrow.js"
import type { CallOptions } from "./Snakepit.js"
import { Snakepit } from "./Snakepit.js"

/**
 * A typed tool. `A` is what the caller passes (encoded with `args` before it is sent), `R` what
 * it gets back (decoded with `result` from what Python returned, or each chunk of a stream).
 *
 * @since 0.3.0
 * @category models
 */
export interface Tool<A, R, Streaming extends boolean = boolean, AI = A, RI = R> {
  readonly name: string
  readonly args: Schema.Schema<A, AI>
  readonly result: Schema.Schema<R, RI>
  /** A generator tool: call it with {@link stream}. */
  readonly streaming: Streaming
}

/**
 * Any tool, for collections of tools.
 *
 * @since 0.3.0
 * @category models
 */
// biome-ignore lint/suspicious/noExplicitAny: A and I are invariant in Schema, so only `any` admits every tool.
export type Any = Tool<any, any, boolean, any, any>

/**
 * A typed tool from its name and Schemas (`streaming: true` for a generator tool, whose
 * `result` describes each chunk).
 *
 * @example
 * ```ts
 * const predict = Tool.make({
 *   name: "predict",
 *   args: Schema.Struct({ features: Schema.Array(Schema.Number) }),
 *   result: Schema.Struct({ label: Schema.String, score: Schema.Number })
 * })
 * const label = Tool.execute(predict, { features: [1, 2] }) // Effect<{ label, score }, CallError | ParseError, Snakepit>
 * ```
 *
 * @since 0.3.0
 * @category constructors
 */
export const make = <A, AI, R, RI, Streaming extends boolean = false>(options: {
  readonly name: string
  readonly args: Schema.Schema<A, AI>
  readonly result: Schema.Schema<R, RI>
  readonly streaming?: Streaming
}): Tool<A, R, Streaming, AI, RI> => ({
  name: options.name,
  args: options.args,
  result: options.result,
  streaming: (options.streaming ?? false) as Streaming
})

const encodeArgs = <A, AI>(schema: Schema.Schema<A, AI>, args: A) => Schema.encode(schema)(args)

/**
 * Calls a unary tool: encodes `args`, runs it on the pool, decodes its result.
 *
 * @since 0.3.0
 * @category calls
 */
export const execute = <A, R, AI, RI>(
  tool: Tool<A, R, false, AI, RI>,
  args: A,
  options?: CallOptions
): Effect.Effect<R, CallError | ParseResult.ParseError, Snakepit> =>
  Effect.flatMap(Snakepit, (snakepit) =>
    encodeArgs(tool.args, args).pipe(
      Effect.flatMap((encoded) => snakepit.execute(tool.name, encoded, options)),
      Effect.flatMap(Schema.decodeUnknown(tool.result))
    )
  )

/**
 * Calls a streaming tool: each chunk is decoded with the tool's `result`; a chunk that does not
 * fit ends the stream with a `ParseError` (which cancels the Python generator).
 *
 * @since 0.3.0
 * @category calls
 */
export const stream = <A, R, AI, RI>(
  tool: Tool<A, R, true, AI, RI>,
  args: A,
  options?: CallOptions
): Stream.Stream<R, CallError | ParseResult.ParseError, Snakepit> =>
  Stream.unwrap(
    Effect.map(Snakepit, (snakepit) =>
      Stream.fromEffect(encodeArgs(tool.args, args)).pipe(
        Stream.flatMap((encoded) => snakepit.executeStream(tool.name, encoded, options)),
        Stream.mapEffect(Schema.decodeUnknown(tool.result))
      )
    )
  )

/**
 * The methods of a client over `Tools`: each tool's name calls it.
 *
 * @since 0.3.0
 * @category models
 */
export type Client<Tools extends Record<string, Any>> = {
  readonly [K in keyof Tools]: Tools[K] extends Tool<infer A, infer R, true, infer _AI, infer _RI>
    ? (args: A, options?: CallOptions) => Stream.Stream<R, CallError | ParseResult.ParseError>
    : Tools[K] extends Tool<infer A, infer R, false, infer _AI, infer _RI>
      ? (args: A, options?: CallOptions) => Effect.Effect<R, CallError | ParseResult.ParseError>
      : never
}

/**
 * A client whose methods are `tools`, over the `Snakepit` service in context: what a generated
 * service's `layer` is made of (`Layer.effect(Models, Tool.client(tools))`).
 *
 * @since 0.3.0
 * @category constructors
 */
export const client = <Tools extends Record<string, Any>>(
  tools: Tools
): Effect.Effect<Client<Tools>, never, Snakepit> =>
  Effect.map(Snakepit, (snakepit) => {
    const methods: Record<string, unknown> = {}
    for (const [key, tool] of Object.entries(tools)) {
      methods[key] = tool.streaming
        ? (args: unknown, options?: CallOptions) =>
            Stream.provideService(stream(tool as Tool<unknown, unknown, true>, args, options), Snakepit, snakepit)
        : (args: unknown, options?: CallOptions) =>
            Effect.provideService(execute(tool as Tool<unknown, unknown, false>, args, options), Snakepit, snakepit)
    }
    return methods as Client<Tools>
  })

// ---------------------------------------------------------------------------------------------
// The adapter's annotations, as the worker describes them

/**
 * A Python annotation as data (python/snakepit_bridge/typeinfo.py); `unknown` is what could not
 * be mapped, with the annotation and why.
 *
 * @since 0.3.0
 * @category models
 */
export type TypeInfo =
  | {
      readonly kind:
        | "int"
        | "float"
        | "str"
        | "bool"
        | "bytes"
        | "none"
        | "any"
        | "datetime"
        | "date"
        | "decimal"
        | "uuid"
        | "ndarray"
        | "table"
    }
  | { readonly kind: "unknown"; readonly annotation: string; readonly reason: string }
  | { readonly kind: "list"; readonly items: TypeInfo }
  | { readonly kind: "dict"; readonly values: TypeInfo }
  | { readonly kind: "tuple"; readonly items: ReadonlyArray<TypeInfo> }
  | { readonly kind: "union"; readonly members: ReadonlyArray<TypeInfo> }
  | { readonly kind: "literal"; readonly values: ReadonlyArray<string | number | boolean | null> }
  | {
      readonly kind: "object"
      readonly name: string
      readonly fields: ReadonlyArray<{ readonly name: string; readonly type: TypeInfo; readonly required: boolean }>
    }

/**
 * The Schema of {@link TypeInfo}.
 *
 * @since 0.3.0
 * @category schemas
 */
export const TypeInfo: Schema.Schema<TypeInfo> = Schema.Union(
  Schema.Struct({
    kind: Schema.Literal(
      "int",
      "float",
      "str",
      "bool",
      "bytes",
      "none",
      "any",
      "datetime",
      "date",
      "decimal",
      "uuid",
      "ndarray",
      "table"
    )
  }),
  Schema.Struct({ kind: Schema.Literal("unknown"), annotation: Schema.String, reason: Schema.String }),
  Schema.Struct({ kind: Schema.Literal("list"), items: Schema.suspend(() => TypeInfo) }),
  Schema.Struct({ kind: Schema.Literal("dict"), values: Schema.suspend(() => TypeInfo) }),
  Schema.Struct({ kind: Schema.Literal("tuple"), items: Schema.Array(Schema.suspend(() => TypeInfo)) }),
  Schema.Struct({ kind: Schema.Literal("union"), members: Schema.Array(Schema.suspend(() => TypeInfo)) }),
  Schema.Struct({
    kind: Schema.Literal("literal"),
    values: Schema.Array(Schema.Union(Schema.String, Schema.Number, Schema.Boolean, Schema.Null))
  }),
  Schema.Struct({
    kind: Schema.Literal("object"),
    name: Schema.String,
    fields: Schema.Array(
      Schema.Struct({ name: Schema.String, type: Schema.suspend(() => TypeInfo), required: Schema.Boolean })
    )
  })
)

/**
 * A tool's annotations: each parameter's type, and its return type (for a streaming tool: the
 * type of each chunk).
 *
 * @since 0.3.0
 * @category models
 */
export const ToolTypes = Schema.Struct({
  params: Schema.Record({ key: Schema.String, value: TypeInfo }),
  returns: TypeInfo
})

/**
 * @since 0.3.0
 * @category models
 */
export type ToolTypes = typeof ToolTypes.Type

/**
 * The Schema of an apache-arrow `Table` (what pandas DataFrames and pyarrow tables arrive as).
 *
 * @since 0.3.0
 * @category schemas
 */
export const ArrowTableFromSelf: Schema.Schema<Table> = Schema.declare(
  (value): value is Table => Arrow.isTable(value),
  { identifier: "ArrowTable", description: "an apache-arrow Table" }
)
