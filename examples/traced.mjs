// One trace from TypeScript into Python and back. An HTTP-like request calls two Python tools
// (one streams); @effect/opentelemetry exports the spans of both sides, and Python's log records
// arrive in Effect's logger with the trace and span they were made in. Run it with
// `npm run build && node examples/traced.mjs`.
//
// The exporter here keeps spans in memory so that the program can print the tree; an application
// passes its own (OTLP, say) to NodeSdk.layer the same way, and Python needs no exporter or SDK.
import { fileURLToPath } from "node:url"
import { NodeSdk } from "@effect/opentelemetry"
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Snakepit, SnakepitMetrics, SnakepitPool } from "@snakepit/core"
import { Console, Effect, Layer, Logger, LogLevel, Stream } from "effect"

const exporter = new InMemorySpanExporter()
const Tracing = NodeSdk.layer(() => ({
  resource: { serviceName: "recommendations" },
  spanProcessor: new SimpleSpanProcessor(exporter)
}))

const Pool = SnakepitPool.layer({
  size: 2,
  adapter: "recommender:Recommender",
  pythonPath: [fileURLToPath(new URL("./traced", import.meta.url))],
  ...(process.env.SNAKEPIT_PYTHON ? { python: process.env.SNAKEPIT_PYTHON } : {})
})

// What an HTTP handler would do for GET /recommendations?user=alice.
const handle = (user) =>
  Effect.gen(function* () {
    const snakepit = yield* Snakepit
    const { vector } = yield* snakepit.execute("features", { user })
    const items = yield* Stream.runCollect(snakepit.executeStream("recommend", { vector, k: 3 }))
    return [...items]
  }).pipe(Effect.withSpan("GET /recommendations", { kind: "server", attributes: { "http.route": "/recommendations" } }))

/** The exported spans as a tree, with each span's duration and its most telling attributes. */
const tree = (spans) => {
  const children = new Map()
  for (const span of spans) {
    const parent = span.parentSpanContext?.spanId ?? "root"
    children.set(parent, [...(children.get(parent) ?? []), span])
  }
  const ms = (span) => ((span.duration[0] * 1e9 + span.duration[1]) / 1e6).toFixed(1)
  const shown = ["tool", "worker", "outcome", "user", "rows", "rank"]
  const lines = []
  const walk = (span, prefix, last) => {
    const attributes = shown
      .filter((key) => span.attributes[key] !== undefined)
      .map((key) => `${key}=${span.attributes[key]}`)
      .join(" ")
    lines.push(`${prefix}${last ? "└─ " : "├─ "}${span.name}  ${ms(span)} ms  ${attributes}`.trimEnd())
    const kids = (children.get(span.spanContext().spanId) ?? []).sort(
      (a, b) => a.startTime[0] - b.startTime[0] || a.startTime[1] - b.startTime[1]
    )
    for (const [i, kid] of kids.entries()) walk(kid, `${prefix}${last ? "   " : "│  "}`, i === kids.length - 1)
  }
  const roots = (children.get("root") ?? []).filter((s) => s.name === "GET /recommendations")
  for (const root of roots) walk(root, "", true)
  return lines.join("\n")
}

const program = Effect.gen(function* () {
  const items = yield* handle("alice")
  yield* Console.log(`recommended: ${items.map((i) => `${i.item} (${i.score})`).join(", ")}\n`)
  yield* Console.log(tree(exporter.getFinishedSpans()))
  const calls = (yield* SnakepitMetrics.forPool()).filter((m) => m.name === "snakepit_call_duration_seconds")
  yield* Console.log(`\ncalls per tool: ${calls.map((m) => `${m.tags.tool} ${m.state.count}`).join(", ")}`)
})

// Python's log records go through this logger, annotated with pool, worker, tool, traceId, spanId.
const Logging = Logger.minimumLogLevel(LogLevel.Info)

await Effect.runPromise(program.pipe(Effect.provide(Layer.mergeAll(Pool, Tracing, Logging))))
