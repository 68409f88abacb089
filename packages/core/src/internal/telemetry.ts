/**
 * A call's telemetry on the host: the trace context sent to Python, and what comes back.
 *
 * - Spans the tool made (`ctx.span`, its own span) are emitted through the calling fiber's
 *   tracer as children of the call's span, with the worker's start and end times, as soon as
 *   their start arrives: a log record made inside one can then name it, and a span the worker
 *   never ended (a crash) is ended by the host with why.
 * - Log records go through the calling fiber's loggers (its `Logger`, its minimum level) with
 *   the pool, worker, tool, session, trace and span as annotations.
 *
 * Everything here runs in the transport's callbacks, outside any fiber: spans are plain method
 * calls on the tracer, and logs run on a runtime made from the caller's fiber.
 *
 * @internal
 */
import { Clock, Context, Effect, Exit, type Fiber, LogLevel, Metric, Option, Runtime, type Tracer } from "effect"
import type { TelemetryItem, TelemetrySink } from "../WorkerFactory.js"

/** Whom the call's records are about. */
export interface CallInfo {
  readonly pool: string
  readonly tool: string
  readonly session: string | undefined
  readonly workerId: string
  readonly pid: number
}

/** The Python exception that ended a span, as the tracer's exit needs it. */
class PythonException extends Error {
  constructor(type: string, message: string, traceback: string) {
    super(message)
    this.name = type || "Error"
    this.stack = traceback.length > 0 ? traceback : `${this.name}: ${message}`
  }
}

/** A call the worker never finished (it crashed or the channel broke). */
class CallLost extends Error {
  override readonly name = "CallLost"
}

const levelOf = (pythonLevel: number): LogLevel.LogLevel =>
  pythonLevel >= 50
    ? LogLevel.Fatal
    : pythonLevel >= 40
      ? LogLevel.Error
      : pythonLevel >= 30
        ? LogLevel.Warning
        : pythonLevel >= 20
          ? LogLevel.Info
          : pythonLevel >= 10
            ? LogLevel.Debug
            : LogLevel.Trace

const nanos = (micros: number): bigint => BigInt(Math.round(micros)) * 1000n

/** W3C `traceparent` of a span. */
export const traceparentOf = (span: Tracer.AnySpan): string =>
  `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`

/** Records and spans the workers dropped, tagged with `pool` and `tool`. */
export interface DroppedMetrics {
  readonly logs: Metric.Metric.Counter<number>
  readonly spans: Metric.Metric.Counter<number>
}

/**
 * The sink of one call, run by `fiber` (the caller's). `span` is the call's span when a recording
 * tracer is installed; without it Python records no spans and only its logs come back. A class,
 * not closures: one is made per call, traced or not.
 */
class CallSink implements TelemetrySink {
  readonly traceparent: string | undefined
  /** The worker's open spans by its ids; made at the first span. */
  private open: Map<string, Tracer.Span> | undefined
  private runtime: Runtime.Runtime<never> | undefined
  private closed = false

  constructor(
    private readonly fiber: Fiber.RuntimeFiber<unknown, unknown>,
    private readonly info: CallInfo,
    private readonly span: Tracer.Span | undefined,
    private readonly dropped: DroppedMetrics
  ) {
    this.traceparent = span === undefined ? undefined : traceparentOf(span)
  }

  private run(effect: Effect.Effect<void>) {
    // The caller's loggers and log level, as they are when the first record arrives.
    this.runtime ??= Runtime.make({
      context: this.fiber.currentContext,
      fiberRefs: this.fiber.getFiberRefs(),
      runtimeFlags: Runtime.defaultRuntime.runtimeFlags
    })
    Runtime.runFork(this.runtime)(effect)
  }

  private annotations(spanId: string): Record<string, unknown> {
    const { info, span } = this
    const annotated: Record<string, unknown> = {
      pool: info.pool,
      worker: info.workerId,
      pid: info.pid,
      tool: info.tool
    }
    if (info.session !== undefined) annotated.session = info.session
    if (span !== undefined) {
      annotated.traceId = span.traceId
      annotated.spanId = this.open?.get(spanId)?.spanId ?? span.spanId
    }
    return annotated
  }

  private reportDropped(logs: number, spans: number) {
    const { info, dropped } = this
    const tagged = (counter: Metric.Metric.Counter<number>) =>
      Metric.tagged(Metric.tagged(counter, "pool", info.pool), "tool", info.tool)
    this.run(
      Effect.logWarning(
        `worker ${info.workerId}: "${info.tool}" made more than the worker forwards; dropped ` +
          `${logs} log record(s) (rate limit) and ${spans} span(s) (per-call cap)`
      ).pipe(
        Effect.zipRight(logs > 0 ? Metric.incrementBy(tagged(dropped.logs), logs) : Effect.void),
        Effect.zipRight(spans > 0 ? Metric.incrementBy(tagged(dropped.spans), spans) : Effect.void),
        Effect.annotateLogs(this.annotations(""))
      )
    )
  }

  private start(item: Extract<TelemetryItem, { _tag: "SpanStart" }>) {
    const span = this.span
    if (span === undefined || this.closed) return
    this.open ??= new Map()
    const open = this.open
    const child = this.fiber.currentTracer.span(
      item.name,
      Option.some(open.get(item.parentId) ?? span),
      Context.empty(),
      [],
      nanos(item.timeMicros),
      "internal"
    )
    for (const [key, value] of Object.entries(item.attributes)) child.attribute(key, value)
    open.set(item.spanId, child)
  }

  private end(item: Extract<TelemetryItem, { _tag: "SpanEnd" }>) {
    const child = this.open?.get(item.spanId)
    if (child === undefined) return
    this.open?.delete(item.spanId)
    for (const [key, value] of Object.entries(item.attributes)) child.attribute(key, value)
    for (const event of item.events) child.event(event.name, nanos(event.timeMicros), event.attributes)
    const error = item.error
    child.end(
      nanos(item.timeMicros),
      error === undefined ? Exit.void : Exit.fail(new PythonException(error.type, error.message, error.traceback))
    )
  }

  receive(items: ReadonlyArray<TelemetryItem>) {
    for (const item of items) {
      switch (item._tag) {
        case "SpanStart":
          this.start(item)
          break
        case "SpanEnd":
          this.end(item)
          break
        case "Log":
          if (item.dropped > 0) this.reportDropped(item.dropped, 0)
          this.run(
            Effect.logWithLevel(levelOf(item.level), item.message).pipe(
              Effect.annotateLogs({ ...this.annotations(item.spanId), logger: item.logger })
            )
          )
          break
        case "Dropped":
          if (item.logs > 0 || item.spans > 0) this.reportDropped(item.logs, item.spans)
          break
      }
    }
  }

  close(lost?: string) {
    if (this.closed) return
    this.closed = true
    const open = this.open
    if (open === undefined || open.size === 0) return
    // Spans the worker never ended: it crashed in them, or the call was lost.
    const end = Context.get(this.fiber.currentDefaultServices, Clock.Clock).unsafeCurrentTimeNanos()
    const exit = Exit.fail(new CallLost(lost ?? "the worker ended the call without ending this span"))
    for (const child of [...open.values()].reverse()) child.end(end, exit)
    open.clear()
  }
}

/** The telemetry sink of one call (see {@link CallSink}). */
export const makeSink = (
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  info: CallInfo,
  span: Tracer.Span | undefined,
  dropped: DroppedMetrics
): TelemetrySink => new CallSink(fiber, info, span, dropped)
