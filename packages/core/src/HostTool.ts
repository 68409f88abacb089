/**
 * Host tools: Effect functions registered in TypeScript that Python tools call back into
 * through the host bridge. Each has a Schema for its arguments; `HostTools.layer` collects
 * them into the service the bridge serves.
 *
 * @since 0.1.0
 */
import { Cause, Context, Effect, Exit, Layer, Option, ParseResult, Schema, SchemaAST } from "effect"
import * as Codec from "./internal/codec.js"

/** Tool names become Python identifiers on the worker side, so they follow Python's rules (ASCII). */
const NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]*$/

/** A tool registered in TypeScript, callable from Python workers. Build one with `HostTool.make`. */
export interface HostTool<A, I = unknown, E = never, R = never> {
  readonly name: string
  readonly description: string
  /** Decodes the JSON arguments object the worker sends. */
  readonly parameters: Schema.Schema<A, I, R>
  readonly handler: (args: A) => Effect.Effect<unknown, E, R>
  /** What Python's `ctx.list_host_tools()` reports for this tool, derived from `parameters`. */
  readonly spec: HostToolSpec
}

/**
 * A host tool as workers see it.
 *
 * @since 0.2.0
 * @category models
 */
export interface HostToolSpec {
  readonly name: string
  readonly description: string
  readonly parameters: ReadonlyArray<{ readonly name: string; readonly type: string; readonly required: boolean }>
}

/**
 * Why a call failed, as it crosses to the other side (a Python exception for host tools).
 *
 * @since 0.2.0
 * @category models
 */
export interface ToolFailureInfo {
  readonly kind: "python_exception" | "tool_not_found" | "invalid_arguments" | "unserializable_result"
  /** The error's type: a `_tag`, a class name, or `Defect`. */
  readonly type: string
  readonly message: string
  readonly traceback: string
  readonly available: ReadonlyArray<string>
}

/**
 * One call of a host tool, from a worker.
 *
 * @since 0.2.0
 * @category models
 */
export interface HostCall {
  readonly tool: string
  /** The decoded arguments object. */
  readonly args: unknown
  readonly session: string
  readonly workerId: string
}

/**
 * The outcome of a host tool call: the encoded result, or the failure Python raises.
 *
 * @since 0.2.0
 * @category models
 */
export type HostCallOutcome =
  | { readonly _tag: "Success"; readonly value: Codec.Encoded }
  | { readonly _tag: "Failure"; readonly failure: ToolFailureInfo }

/** Any host tool, whatever its types; the element type of `HostTools.layer`'s arguments. */
// biome-ignore lint/suspicious/noExplicitAny: A and I are invariant in Schema, so only `any` admits every tool.
export type AnyHostTool = HostTool<any, any, any, any>

/** The services a host tool (or a union of them) needs: its handler's and its Schema's. */
export type HostToolContext<T> = T extends HostTool<infer _A, infer _I, infer _E, infer R> ? R : never

/** What `HostTool.make` takes. */
export interface HostToolOptions<A, I, RS, E, RH> {
  /** The name Python calls the tool by: an identifier, `[A-Za-z_][A-Za-z0-9_]*`. */
  readonly name: string
  /** Shown to Python callers (and to models choosing tools). Default "". */
  readonly description?: string
  /** The arguments object, usually a `Schema.Struct`; its properties become the tool's parameters. */
  readonly parameters: Schema.Schema<A, I, RS>
  /** Runs the tool. Its result is sent back as JSON; its failures become a ToolError in Python. */
  readonly handler: (args: A) => Effect.Effect<unknown, E, RH>
}

/**
 * One parameter per property of a Struct-like Schema. The encoded side is described, since
 * that is what the worker must send (a `NumberFromString` takes a string), while refinements
 * keep their names (`Int`) where the encoded side allows.
 */
const parametersOf = (schema: Schema.Schema.Any): HostToolSpec["parameters"] => {
  const ast = SchemaAST.encodedBoundAST(schema.ast)
  if (!SchemaAST.isTypeLiteral(ast)) return []
  return ast.propertySignatures.map((property) => ({
    name: String(property.name),
    type: String(property.type),
    required: !property.isOptional
  }))
}

/**
 * Defines a host tool. Throws when `name` is not an identifier: that is a programming error,
 * best reported where the tool is defined. Not exported on its own: `make` at the package's
 * top level would say nothing; callers use `HostTool.make`.
 */
const make = <A, I, RS, E, RH>(options: HostToolOptions<A, I, RS, E, RH>): HostTool<A, I, E, RS | RH> => {
  if (!NAME_PATTERN.test(options.name)) {
    throw new TypeError(
      `HostTool.make: invalid tool name ${JSON.stringify(options.name)}; expected an identifier matching ${NAME_PATTERN}`
    )
  }
  const description = options.description ?? ""
  return {
    name: options.name,
    description,
    parameters: options.parameters,
    handler: options.handler,
    spec: {
      name: options.name,
      description,
      parameters: parametersOf(options.parameters as Schema.Schema.Any)
    }
  }
}

/** Constructors of host tools: `HostTool.make({ name, description, parameters, handler })`. */
export const HostTool: {
  /**
   * Defines a host tool. Throws a TypeError when `name` is not an identifier
   * (`[A-Za-z_][A-Za-z0-9_]*`), a programming error best reported where the tool is defined.
   */
  readonly make: <A, I, RS, E, RH>(options: HostToolOptions<A, I, RS, E, RH>) => HostTool<A, I, E, RS | RH>
} = { make }

/**
 * The registered host tools, as every transport serves them to workers.
 *
 * @since 0.1.0
 * @category models
 */
export interface HostToolsService {
  /** Every tool's spec, in registration order. */
  readonly tools: ReadonlyArray<HostToolSpec>
  /**
   * Serves one call. Never fails: unknown tools, bad arguments, handler failures and defects
   * all become a `Failure` outcome. Interrupting it interrupts the handler.
   */
  readonly call: (request: HostCall) => Effect.Effect<HostCallOutcome>
}

const toolError = (
  kind: ToolFailureInfo["kind"],
  type: string,
  message: string,
  extra: { readonly traceback?: string; readonly availableTools?: ReadonlyArray<string> } = {}
): HostCallOutcome => ({
  _tag: "Failure",
  failure: { kind, type, message, traceback: extra.traceback ?? "", available: [...(extra.availableTools ?? [])] }
})

/** The name Python shows as the exception class: the `_tag` of a tagged error, else the class name. */
const typeOf = (error: unknown): string => {
  if (error === null || error === undefined) return String(error)
  const tag = (error as { readonly _tag?: unknown })._tag
  if (typeof tag === "string" && tag !== "") return tag
  // Object(): a failure with a string or number still has a class name to show ("String").
  return (Object(error) as { readonly constructor?: { readonly name?: string } }).constructor?.name || "Object"
}

/** The error's message; a tagged error without one is shown by its fields, which say more than "". */
const messageOf = (error: unknown): string => {
  if (typeof error === "string") return error
  if (typeof error !== "object" || error === null) return String(error)
  const message = (error as { readonly message?: unknown }).message
  if (typeof message === "string" && message !== "") return message
  try {
    const json = JSON.stringify(error)
    if (json !== undefined && json !== "{}") return json
  } catch {
    // Not serialisable (a cycle, a bigint): fall back to String().
  }
  return String(error)
}

const stackOf = (error: unknown): string => {
  const stack = typeof error === "object" && error !== null ? (error as { readonly stack?: unknown }).stack : undefined
  return typeof stack === "string" ? stack : ""
}

/**
 * The result as it crosses, or why it cannot. Refuses what `JSON.stringify` would silently
 * change (a Map becoming `{}`, NaN becoming null); `undefined` (an `Effect.void` handler) is null.
 */
const encodeResult = (tool: string, result: unknown): HostCallOutcome => {
  const encoded = Codec.encode(result === undefined ? null : result, "result")
  if (Codec.isProblem(encoded)) {
    return toolError(
      "unserializable_result",
      "UnserializableResult",
      `result of host tool "${tool}" cannot be sent at ${encoded.path}: ${encoded.reason}`
    )
  }
  return { _tag: "Success", value: encoded }
}

/** The handler's failure or defect as the ToolError Python raises; `PYTHON_EXCEPTION` is the "tool failed" kind. */
const failureResponse = (cause: Cause.Cause<unknown>): HostCallOutcome => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    const error = failure.value
    return toolError("python_exception", typeOf(error), messageOf(error), { traceback: stackOf(error) })
  }
  const defect = Cause.squash(cause)
  return toolError("python_exception", "Defect", messageOf(defect), { traceback: Cause.pretty(cause) })
}

const decodeOptions: SchemaAST.ParseOptions = {
  errors: "all",
  // Like a Python function, a tool refuses keyword arguments it does not declare.
  onExcessProperty: "error"
}

/** Builds the service from tools whose requirements are already in `context`. */
const makeService = (tools: ReadonlyArray<AnyHostTool>, context: Context.Context<never>): HostToolsService => {
  const byName = new Map<string, AnyHostTool>()
  for (const tool of tools) {
    if (byName.has(tool.name)) {
      throw new Error(`HostTools.layer: more than one host tool is named "${tool.name}"; tool names must be unique`)
    }
    byName.set(tool.name, tool)
  }
  const available = [...byName.keys()].sort()

  const call = (request: HostCall): Effect.Effect<HostCallOutcome> =>
    Effect.suspend(() => {
      const tool = byName.get(request.tool)
      if (tool === undefined) {
        return Effect.succeed(
          toolError(
            "tool_not_found",
            "ToolNotFound",
            `no host tool named "${request.tool}"; available: ${available.join(", ") || "(none)"}`,
            { availableTools: available }
          )
        )
      }
      const schema = tool.parameters as Schema.Schema<unknown, unknown, never>
      return Schema.decodeUnknown(schema)(request.args, decodeOptions).pipe(
        Effect.matchCauseEffect({
          onFailure: (cause) => {
            const failure = Cause.failureOption(cause)
            if (Option.isSome(failure) && ParseResult.isParseError(failure.value)) {
              return Effect.succeed(
                toolError(
                  "invalid_arguments",
                  "ParseError",
                  `invalid arguments for host tool "${tool.name}":\n${ParseResult.TreeFormatter.formatErrorSync(failure.value)}`
                )
              )
            }
            // A defect (or interruption) while decoding, e.g. a throwing transformation.
            return Effect.failCause(cause)
          },
          onSuccess: (args) =>
            Effect.suspend(() => tool.handler(args) as Effect.Effect<unknown, unknown>).pipe(
              Effect.map((result) => encodeResult(tool.name, result))
            )
        }),
        Effect.provide(context),
        Effect.exit,
        Effect.flatMap((exit) => {
          if (Exit.isSuccess(exit)) return Effect.succeed(exit.value)
          // The caller cancelled: let the interruption through rather than answer.
          if (Cause.isInterruptedOnly(exit.cause)) return Effect.interrupt
          return Effect.succeed(failureResponse(exit.cause))
        })
      )
    })

  return { tools: tools.map((tool) => tool.spec), call }
}

/**
 * The registered host tools. Provide it with `HostTools.layer(tool1, tool2, ...)`; the
 * handlers' services are taken from the layer's context when it is built.
 */
export class HostTools extends Context.Tag("@snakepit/core/HostTools")<HostTools, HostToolsService>() {
  /**
   * A layer offering `tools`. It requires every service the tools need, captured once at build
   * time, so a call does not depend on the caller's context. Dies at build time when two tools
   * share a name.
   */
  static layer<const Tools extends ReadonlyArray<AnyHostTool>>(
    ...tools: Tools
  ): Layer.Layer<HostTools, never, HostToolContext<Tools[number]>> {
    return Layer.effect(
      HostTools,
      Effect.flatMap(Effect.context<HostToolContext<Tools[number]>>(), (context) =>
        Effect.sync(() => makeService(tools, context as Context.Context<never>))
      )
    )
  }
}
