/**
 * One trace from TypeScript into Python and back, against real workers (both transports): the
 * spans a tool makes arrive as children of the host's, its log records reach Effect's Logger,
 * and the registry's SQL stays out of the user's trace.
 */
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { NodeSdk } from "@effect/opentelemetry"
import { describe, expect, it } from "@effect/vitest"
import { SpanStatusCode } from "@opentelemetry/api"
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { RunId } from "@snakepit/registry"
import { Fixtures, Processes, Venv } from "@snakepit/testkit"
import { Chunk, Effect, Either, HashMap, Layer, Logger, LogLevel, Stream } from "effect"
import { Snakepit, SnakepitMetrics, SnakepitPool } from "../src/index.js"

const fixtures = fileURLToPath(new URL("./fixtures/python", import.meta.url))
const traced = { size: 1, adapter: "traced", pythonPath: [fixtures] } as const

/** A recording tracer whose spans a test reads (the setup a user has, with an in-memory exporter). */
const tracing = () => {
  const exporter = new InMemorySpanExporter()
  const layer = NodeSdk.layer(() => ({
    resource: { serviceName: "snakepit-test" },
    spanProcessor: new SimpleSpanProcessor(exporter)
  }))
  const spans = () => exporter.getFinishedSpans()
  const named = (name: string): ReadableSpan => {
    const found = spans().find((s) => s.name === name)
    if (found === undefined)
      throw new Error(
        `no span ${name} among ${spans()
          .map((s) => s.name)
          .join(", ")}`
      )
    return found
  }
  const awaitSpan = (name: string) =>
    Processes.awaitCondition(`span ${name} exported`, () => spans().some((s) => s.name === name))
  return { layer, spans, named, awaitSpan }
}

const parentOf = (span: ReadableSpan) => span.parentSpanContext?.spanId

/** Log records as the Effect logger saw them. */
const recordingLogger = () => {
  const records: Array<{ level: string; message: string; annotations: Record<string, unknown> }> = []
  const layer = Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ logLevel, message, annotations }) => {
      records.push({
        level: logLevel.label,
        message: (Array.isArray(message) ? message : [message]).map(String).join(" "),
        annotations: Object.fromEntries(HashMap.toEntries(annotations))
      })
    })
  )
  return { records, layer }
}

describe("telemetry", () => {
  it.live("a tool's spans nest under the host's call span, in the same trace", () => {
    const t = tracing()
    return Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          const result = (yield* pool.execute("nested").pipe(Effect.withSpan("request"))) as { trace_id: string }
          const request = t.named("request")
          const execute = t.named("snakepit.pool.execute")
          const call = t.named("snakepit.worker.call")
          const tool = t.named("python nested")
          const outer = t.named("outer")
          const inner = t.named("inner")
          // One trace: the id Python saw is the host's.
          expect(result.trace_id).toBe(request.spanContext().traceId)
          for (const span of [execute, call, tool, outer, inner]) {
            expect(span.spanContext().traceId).toBe(request.spanContext().traceId)
          }
          expect(parentOf(execute)).toBe(request.spanContext().spanId)
          expect(parentOf(call)).toBe(execute.spanContext().spanId)
          expect(parentOf(tool)).toBe(call.spanContext().spanId)
          expect(parentOf(outer)).toBe(tool.spanContext().spanId)
          expect(parentOf(inner)).toBe(outer.spanContext().spanId)
          // Attributes from the start and from later; the pool's spans say who served the call.
          expect(outer.attributes).toMatchObject({ rows: 3, late: "yes" })
          expect(call.attributes).toMatchObject({ pool: "default", tool: "nested", worker: expect.any(String) })
          expect(execute.attributes).toMatchObject({ tool: "nested", outcome: "success", pid: expect.any(Number) })
          // Python's own clock: the inner span lies within the outer one, and took its 2 ms.
          const nanos = ([s, ns]: [number, number]) => s * 1e9 + ns
          expect(nanos(inner.startTime)).toBeGreaterThanOrEqual(nanos(outer.startTime))
          expect(nanos(inner.endTime)).toBeLessThanOrEqual(nanos(outer.endTime))
          expect(nanos(inner.duration)).toBeGreaterThanOrEqual(2e6)
          // A call that had to wait for the (only) worker did so in a span of its own.
          yield* Effect.all([pool.execute("ping"), pool.execute("ping")], { concurrency: 2 })
          const queue = t.named("snakepit.pool.queue")
          const waited = t.spans().find((s) => s.spanContext().spanId === parentOf(queue))
          expect(waited?.name).toBe("snakepit.pool.execute")
          expect(waited?.attributes.tool).toBe("ping")
        }),
      traced
    ).pipe(Effect.provide(t.layer))
  })

  it.live("the registry's SQL stays out of the user's trace", () => {
    const t = tracing()
    const runId = RunId.generate()
    const dataDir = mkdtempSync(join(tmpdir(), "snakepit-data-"))
    return Effect.scoped(
      Effect.gen(function* () {
        const pool = yield* Snakepit
        yield* pool.execute("ping").pipe(Effect.withSpan("request"))
      }).pipe(Effect.provide(Layer.provide(SnakepitPool.layer({ ...traced, dataDir }), RunId.RunId.fixed(runId))))
    ).pipe(
      Effect.zipRight(Processes.awaitRunGone(runId)),
      Effect.tap(() => {
        // The pool's start, its call and its close made spans, none of them the registry's statements.
        expect(t.spans().map((s) => s.name)).toContain("snakepit.worker.call")
        expect(t.spans().filter((s) => s.name.startsWith("sql"))).toEqual([])
      }),
      Effect.provide(Layer.merge(t.layer, Logger.minimumLogLevel(LogLevel.Warning)))
    )
  })

  it.live("async tools nest their spans too", () => {
    const t = tracing()
    return Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          yield* pool.execute("nested_async")
          expect(parentOf(t.named("async inner"))).toBe(t.named("async outer").spanContext().spanId)
          expect(parentOf(t.named("async outer"))).toBe(t.named("python nested_async").spanContext().spanId)
        }),
      traced
    ).pipe(Effect.provide(t.layer))
  })

  it.live("an exception marks the span as failed, with an exception event", () => {
    const t = tracing()
    return Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          const error = yield* Effect.flip(pool.execute("fails_in_span"))
          expect(error._tag).toBe("PythonError")
          for (const name of ["doomed", "python fails_in_span"]) {
            const span = t.named(name)
            expect(span.status.code).toBe(SpanStatusCode.ERROR)
            const event = span.events.find((e) => e.name === "exception")
            expect(event?.attributes?.["exception.type"]).toBe("KeyError")
            expect(String(event?.attributes?.["exception.stacktrace"])).toContain("no such row")
          }
          expect(t.named("snakepit.pool.execute").attributes.outcome).toBe("PythonError")
        }),
      traced
    ).pipe(Effect.provide(t.layer))
  })

  it.live("a streaming tool's span ends when the stream ends, and when it is cancelled", () => {
    const t = tracing()
    return Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          const all = yield* Stream.runCollect(pool.executeStream("numbers", { count: 3 }))
          expect(Chunk.size(all)).toBe(3)
          const stream = t.named("snakepit.worker.stream")
          const tool = t.named("python numbers")
          expect(parentOf(tool)).toBe(stream.spanContext().spanId)
          expect(
            t
              .spans()
              .filter((s) => s.name === "produce")
              .map((s) => s.attributes.i)
          ).toEqual([0, 1, 2])

          // Cancelled after one chunk: the Python span ends (marked cancelled) once the generator stops.
          yield* Stream.runCollect(pool.executeStream("anumbers", { count: 10_000 }).pipe(Stream.take(1)))
          yield* t.awaitSpan("python anumbers")
          expect(t.named("python anumbers").attributes["snakepit.cancelled"]).toBe(true)
          expect(t.spans().filter((s) => s.name === "aproduce").length).toBeGreaterThanOrEqual(1)
        }),
      traced
    ).pipe(Effect.provide(t.layer))
  })

  it.live("a Python log record reaches the Effect logger with its level, annotations and trace", () => {
    const t = tracing()
    const logs = recordingLogger()
    return Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          yield* pool.execute("nested", {}, { session: "s-1" })
          const record = logs.records.find((r) => r.message === "inside inner")
          expect(record?.level).toBe("WARN")
          const inner = t.named("inner")
          expect(record?.annotations).toMatchObject({
            pool: "default",
            tool: "nested",
            session: "s-1",
            logger: "traced",
            traceId: inner.spanContext().traceId,
            // The span the record was made in, as the exporter knows it.
            spanId: inner.spanContext().spanId
          })

          // An exception's traceback arrives with its record, in one piece.
          yield* pool.execute("logs", { message: "it broke" })
          const error = logs.records.find((r) => r.message.startsWith("it broke"))
          expect(error?.level).toBe("ERROR")
          expect(error?.message).toContain("Traceback (most recent call last)")
          expect(error?.message).toContain("ValueError: for the traceback")
        }),
      traced
    ).pipe(Effect.provide(Layer.merge(t.layer, logs.layer)))
  })

  it.live("untraced calls still bring their log records", () => {
    const logs = recordingLogger()
    return Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          yield* pool.execute("nested")
          const record = logs.records.find((r) => r.message === "inside inner")
          expect(record?.annotations).toMatchObject({ tool: "nested", worker: expect.any(String) })
          expect(record?.annotations.traceId).toBeUndefined()
        }),
      traced
    ).pipe(Effect.provide(logs.layer))
  })

  it.live("a tool flooding the log is rate-limited, reports what it dropped, and the pool keeps serving", () => {
    const logs = recordingLogger()
    return Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          yield* pool.execute("log_flood", { count: 20_000 })
          const forwarded = logs.records.filter((r) => r.message.startsWith("flood ")).length
          expect(forwarded).toBeGreaterThan(0)
          expect(forwarded).toBeLessThan(5_000)
          const warning = logs.records.find((r) => r.message.includes("dropped"))
          expect(warning?.level).toBe("WARN")
          const dropped = (yield* SnakepitMetrics.forPool("default")).find(
            (m) => m.name === "snakepit_python_logs_dropped_total" && m.tags.tool === "log_flood"
          )
          expect(dropped?.state).toMatchObject({ count: 20_000 - forwarded })
          expect(yield* pool.execute("ping")).toMatchObject({ message: "pong" })
        }),
      traced
    ).pipe(Effect.provide(logs.layer))
  })

  it.live("a crash mid-call is recorded on the host's spans", () => {
    const t = tracing()
    return Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          const error = yield* Effect.flip(pool.execute("crash_after_span"))
          expect(error._tag).toBe("WorkerCrashed")
          const call = t.named("snakepit.worker.call")
          expect(call.status.code).toBe(SpanStatusCode.ERROR)
          expect(call.events.find((e) => e.name === "exception")?.attributes?.["exception.message"]).toMatch(
            /exited with code 7/
          )
          expect(t.named("snakepit.pool.execute").attributes.outcome).toBe("WorkerCrashed")
        }),
      traced
    ).pipe(Effect.provide(t.layer))
  })

  // The local channel sends a tool's spans and records as they are made; gRPC carries them with the
  // call's answer, which a crash never sends (docs/adr/0012).
  it.live.skipIf(process.env.SNAKEPIT_TRANSPORT === "grpc")(
    "a crash mid-call loses no span or log already made (local channel)",
    () => {
      const t = tracing()
      const logs = recordingLogger()
      return Fixtures.withPool(
        (pool) =>
          Effect.gen(function* () {
            yield* Effect.flip(pool.execute("crash_after_span"))
            expect(t.named("finished before the crash").status.code).not.toBe(SpanStatusCode.ERROR)
            expect(logs.records.some((r) => r.message === "last words")).toBe(true)
            // Spans the worker never ended are ended by the host, as failed.
            const open = t.named("open at the crash")
            expect(open.status.code).toBe(SpanStatusCode.ERROR)
            expect(open.status.message).toContain("connection_lost")
            expect(t.named("python crash_after_span").status.code).toBe(SpanStatusCode.ERROR)
          }),
        traced
      ).pipe(Effect.provide(Layer.merge(t.layer, logs.layer)))
    }
  )

  it.live("per-tool metrics are readable per pool without knowing their tags", () =>
    Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          yield* pool.execute("ping").pipe(Effect.repeatN(2))
          yield* Effect.either(pool.execute("fails_in_span"))
          const metrics = yield* SnakepitMetrics.forPool("metrics-pool")
          const find = (name: string, tags: Record<string, string>) =>
            metrics.find((m) => m.name === name && Object.entries(tags).every(([k, v]) => m.tags[k] === v))
          expect(find("snakepit_call_duration_seconds", { tool: "ping", outcome: "success" })?.state).toMatchObject({
            count: 3
          })
          expect(
            find("snakepit_call_duration_seconds", { tool: "fails_in_span", outcome: "failure" })?.state
          ).toMatchObject({ count: 1 })
          expect(find("snakepit_queue_wait_seconds", { tool: "ping" })?.state).toMatchObject({ count: 3 })
          expect(find("snakepit_calls_in_flight", { tool: "ping" })?.state).toMatchObject({ value: 0 })
          expect(find("snakepit_requests_total", {})?.state).toMatchObject({ count: 4 })
        }),
      { pools: { "metrics-pool": traced } }
    ).pipe(Effect.provide(Logger.minimumLogLevel(LogLevel.None)))
  )

  it.live("a call without a recording tracer sends no trace context and records no Python span", () =>
    Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          const result = yield* Effect.either(pool.execute("nested"))
          expect(Either.getOrThrow(result)).toEqual({ trace_id: "" })
        }),
      traced
    ).pipe(Effect.provide(Logger.minimumLogLevel(LogLevel.None)))
  )

  it.live(
    "with opentelemetry-api in the worker's environment, the tool's OpenTelemetry context is its span",
    (test) => {
      const t = tracing()
      return Effect.gen(function* () {
        // grpcio comes from the suite's interpreter, for the gRPC transport.
        const venv = yield* Effect.sync(() =>
          Venv.withPackages({
            name: "otel-api",
            packages: ["opentelemetry-api"],
            imports: ["opentelemetry.trace"],
            shareModulesOf: Venv.suitePython()
          })
        )
        if (venv._tag === "Unavailable") return test.skip(venv.reason)
        yield* Fixtures.withPool(
          (pool) =>
            Effect.gen(function* () {
              const seen = (yield* pool.execute("otel_parent")) as { trace_id: string; outer: string; inner: string }
              // The user's own OpenTelemetry spans (exported by their SDK) would nest under the host's
              // span of the call, an id the exported trace has; ctx.span does not move it.
              const call = t.named("snakepit.worker.call")
              expect(seen).toEqual({
                trace_id: call.spanContext().traceId,
                outer: call.spanContext().spanId,
                inner: call.spanContext().spanId
              })
              expect(parentOf(t.named("with otel"))).toBe(t.named("python otel_parent").spanContext().spanId)
            }),
          { ...traced, python: venv.python }
        )
      }).pipe(Effect.provide(t.layer))
    },
    // The first run makes the venv: pip on a loaded machine can take minutes.
    300_000
  )
})
