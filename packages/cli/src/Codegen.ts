/**
 * `snakepit codegen`: starts one worker of an adapter, reads its tools' annotations and writes a
 * TypeScript module with a Schema for each tool's arguments and result, the tools as
 * `Tool.make(...)`, and a service (`Context.Tag` with a `layer` over `Snakepit`) whose methods
 * are the tools. `--check` writes nothing and fails when the file differs (for CI).
 *
 * @since 0.3.0
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs"
import { delimiter, resolve } from "node:path"
import { Command, Options } from "@effect/cli"
import { Snakepit, SnakepitPool, type Tool, type ToolDescription } from "@snakepit/core"
import { Console, Effect, Option } from "effect"
import { DiagnosticFailure } from "./errors.js"

type TypeInfo = Tool.TypeInfo

const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/

const pascal = (name: string): string =>
  name
    .split(/[^A-Za-z0-9]+/)
    .filter((part) => part !== "")
    .map((part) => part[0]!.toUpperCase() + part.slice(1))
    .join("") || "Tool"

const key = (name: string): string => (IDENTIFIER.test(name) ? name : JSON.stringify(name))

const comment = (text: string): string => text.replaceAll("*/", "* /")

/** Renders types to Schema expressions, collecting named object Schemas on the way. */
class Renderer {
  /** Named Schemas in dependency order: const name and its source. */
  readonly declarations: Array<{ readonly name: string; readonly source: string }> = []
  private readonly named = new Map<string, string>()
  usesNDArray = false

  /** `reserved`: names the module declares besides the object Schemas. */
  constructor(private readonly reserved: ReadonlySet<string>) {}

  schema(type: TypeInfo): string {
    switch (type.kind) {
      case "int":
        return "Schema.Int"
      case "float":
        return "Schema.Number"
      case "str":
      case "decimal":
      case "uuid":
        return "Schema.String"
      case "bool":
        return "Schema.Boolean"
      case "bytes":
        return "Schema.Uint8ArrayFromSelf"
      case "none":
        return "Schema.Null"
      case "any":
        return "Schema.Unknown"
      case "unknown":
        return `Schema.Unknown /* ${comment(type.annotation)}: ${comment(type.reason)} */`
      case "datetime":
      case "date":
        return "Schema.DateFromSelf"
      case "ndarray":
        this.usesNDArray = true
        return "NDArrayFromSelf"
      case "table":
        return "Tool.ArrowTableFromSelf"
      case "list":
        return `Schema.Array(${this.schema(type.items)})`
      case "dict":
        return `Schema.Record({ key: Schema.String, value: ${this.schema(type.values)} })`
      case "tuple":
        return `Schema.Tuple(${type.items.map((item) => this.schema(item)).join(", ")})`
      case "union": {
        const members = type.members.filter((m) => m.kind !== "none")
        const rendered = members.map((m) => this.schema(m))
        const inner = rendered.length === 1 ? rendered[0]! : `Schema.Union(${rendered.join(", ")})`
        return members.length < type.members.length ? `Schema.NullOr(${inner})` : inner
      }
      case "literal":
        return `Schema.Literal(${type.values.map((v) => JSON.stringify(v)).join(", ")})`
      case "object":
        return this.object(type)
    }
  }

  private object(type: Extract<TypeInfo, { kind: "object" }>): string {
    const fields = type.fields.map((f) => {
      const field = this.schema(f.type)
      return `  ${key(f.name)}: ${f.required ? field : `Schema.optional(${field})`}`
    })
    const source = `Schema.Struct({\n${fields.join(",\n")}\n})`
    const existing = this.named.get(source)
    if (existing !== undefined) return existing
    const base = pascal(type.name)
    let name = base
    for (let n = 2; this.reserved.has(name) || this.declarations.some((d) => d.name === name); n++) {
      name = `${base}${n}`
    }
    this.named.set(source, name)
    this.declarations.push({ name, source })
    return name
  }
}

/**
 * The module `snakepit codegen` writes for `tools` of `adapter`, with the service `service`.
 *
 * @since 0.3.0
 * @category rendering
 */
export const render = (adapter: string, service: string, tools: ReadonlyArray<ToolDescription>): string => {
  const reserved = new Set([service, "tools", "Schema", "Context", "Layer", "Tool", "Snakepit", "NDArrayFromSelf"])
  for (const tool of tools) {
    for (const suffix of ["Args", "Result", "Tool"]) reserved.add(`${pascal(tool.name)}${suffix}`)
  }
  const renderer = new Renderer(reserved)
  const body: Array<string> = []
  const entries: Array<string> = []
  for (const tool of [...tools].sort((a, b) => a.name.localeCompare(b.name))) {
    const base = pascal(tool.name)
    const types = tool.types
    const args = tool.parameters.map((p) => {
      const type: TypeInfo = types?.params[p.name] ?? {
        kind: "unknown",
        annotation: p.type,
        reason: "the worker did not describe it"
      }
      const field = renderer.schema(type)
      return `  ${key(p.name)}: ${p.required ? field : `Schema.optional(${field})`}`
    })
    const result = renderer.schema(types?.returns ?? { kind: "any" })
    const doc = tool.description === "" ? "" : `/** ${comment(tool.description)} */\n`
    body.push(
      `export const ${base}Args = Schema.Struct({${args.length === 0 ? "" : `\n${args.join(",\n")}\n`}})`,
      `export const ${base}Result = ${result}`,
      `${doc}export const ${base}Tool = Tool.make({\n  name: ${JSON.stringify(tool.name)},\n  args: ${base}Args,\n  result: ${base}Result${tool.streaming ? ",\n  streaming: true" : ""}\n})`
    )
    entries.push(`  ${key(tool.name)}: ${base}Tool`)
  }
  const imports = [renderer.usesNDArray ? "NDArrayFromSelf" : undefined, "Snakepit", "Tool"].filter(
    (name): name is string => name !== undefined
  )
  return [
    `// Generated by \`snakepit codegen\` from the adapter ${adapter}. Do not edit: run it again`,
    "// (and `snakepit codegen ... --check` in CI, which fails when this file is stale).",
    `import { ${imports.join(", ")} } from "@snakepit/core"`,
    'import { Context, Layer, Schema } from "effect"',
    "",
    ...renderer.declarations.flatMap((d) => [
      `export const ${d.name} = ${d.source}`,
      `export type ${d.name} = typeof ${d.name}.Type`,
      ""
    ]),
    ...body.flatMap((b) => [b, ""]),
    `/** Every tool of ${adapter}. */`,
    `export const tools = {\n${entries.join(",\n")}\n}`,
    "",
    `/** The tools of ${adapter} as a service; provide it with \`${service}.layer\` over a \`Snakepit\` pool. */`,
    `export class ${service} extends Context.Tag(${JSON.stringify(`snakepit/${adapter}`)})<${service}, Tool.Client<typeof tools>>() {`,
    `  static readonly layer: Layer.Layer<${service}, never, Snakepit> = Layer.effect(${service}, Tool.client(tools))`,
    "}",
    ""
  ].join("\n")
}

/**
 * What `snakepit codegen` does: start the adapter, describe its tools, write or check `out`.
 *
 * @since 0.3.0
 * @category commands
 */
export const codegen = (options: {
  readonly adapter: string
  readonly out: string
  readonly service?: string | undefined
  readonly python?: string | undefined
  readonly pythonPath: ReadonlyArray<string>
  readonly check: boolean
}) =>
  Effect.gen(function* () {
    const service = options.service ?? pascal(options.adapter.split(":")[1] ?? options.adapter.split(".").at(-1)!)
    const tools = yield* Effect.flatMap(Snakepit, (snakepit) => snakepit.describeTools()).pipe(
      Effect.provide(
        SnakepitPool.layer({
          size: 1,
          adapter: options.adapter,
          pythonPath: options.pythonPath.map((dir) => resolve(dir)),
          transport: "local",
          control: false,
          ...(options.python === undefined ? {} : { python: options.python })
        })
      ),
      Effect.tapError((error) =>
        Console.error(`snakepit codegen: cannot describe ${options.adapter}: ${error.message}`)
      ),
      Effect.mapError((error) => new DiagnosticFailure({ command: "codegen", problems: [error.message] }))
    )
    const source = render(options.adapter, service, tools)
    if (options.check) {
      const current = existsSync(options.out) ? readFileSync(options.out, "utf8") : undefined
      if (current !== source) {
        const why = current === undefined ? "does not exist" : "is stale"
        yield* Console.error(`snakepit codegen --check: ${options.out} ${why}; run snakepit codegen without --check`)
        return yield* new DiagnosticFailure({ command: "codegen", problems: [`${options.out} ${why}`] })
      }
      yield* Console.log(`${options.out} is up to date`)
      return
    }
    writeFileSync(options.out, source)
    yield* Console.log(`wrote ${options.out}: ${tools.length} tools of ${options.adapter} as ${service}`)
  })

/** The `codegen` subcommand. */
export const command = Command.make(
  "codegen",
  {
    adapter: Options.text("adapter").pipe(
      Options.withPseudoName("module:Class"),
      Options.withDescription("The adapter whose tools to type, as the pool's `adapter` option names it.")
    ),
    out: Options.text("out").pipe(
      Options.withPseudoName("FILE"),
      Options.withDescription("The TypeScript module to write (or, with --check, to compare).")
    ),
    service: Options.text("service").pipe(
      Options.withPseudoName("Name"),
      Options.withDescription("The service class's name. Default: the adapter's class name."),
      Options.optional
    ),
    python: Options.text("python").pipe(
      Options.withPseudoName("PATH"),
      Options.withDescription("The interpreter to start the adapter with. Default: as a pool chooses."),
      Options.optional
    ),
    pythonPath: Options.text("python-path").pipe(
      Options.withPseudoName("DIR"),
      Options.withDescription("A directory holding the adapter's modules (repeat it, or separate with ':')."),
      Options.repeated
    ),
    check: Options.boolean("check").pipe(
      Options.withDescription("Write nothing; exit 1 when FILE is missing or differs from what would be written.")
    )
  },
  ({ adapter, out, service, python, pythonPath, check }) =>
    codegen({
      adapter,
      out,
      service: Option.getOrUndefined(service),
      python: Option.getOrUndefined(python),
      pythonPath: pythonPath.flatMap((dirs) => dirs.split(delimiter)).filter((dir) => dir !== ""),
      check
    })
).pipe(
  Command.withDescription(
    "Write a typed client (Effect Schemas and a service) for an adapter's tools from their Python annotations; --check fails when the file is stale."
  )
)
