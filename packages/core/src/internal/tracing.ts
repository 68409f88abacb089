/**
 * Spans on the call path only when a tracer that records them is installed.
 *
 * @internal
 */
import { Effect, Exit, type Fiber, type Scope, type Tracer } from "effect"
import type { TelemetrySink } from "../WorkerFactory.js"
import { type CallInfo, type DroppedMetrics, makeSink } from "./telemetry.js"

/**
 * Effect's built-in tracer: it keeps spans in memory for nobody. Read once, since the default
 * services are shared by every runtime.
 */
const nativeTracer: Tracer.Tracer = Effect.runSync(Effect.tracer)

/** What a call's span says about how it ended: `success`, or the failure's tag. */
const outcomeOf = (exit: Exit.Exit<unknown, unknown>): string => {
  if (Exit.isSuccess(exit)) return "success"
  const cause = exit.cause
  if (cause._tag === "Fail") {
    const error = cause.error
    return typeof error === "object" && error !== null && "_tag" in error ? String(error._tag) : "failure"
  }
  return cause._tag === "Interrupt" ? "interrupted" : "defect"
}

/**
 * `Effect.withSpan` when a real tracer (OpenTelemetry, for instance) is provided; the effect
 * itself under the built-in one. A span costs about 20 µs and several allocations per call,
 * which is a tenth of the pool's whole overhead (see docs/adr/0004). The span's `outcome`
 * attribute says how the call ended.
 */
export const withCallSpan =
  (name: string, attributes: () => Record<string, unknown>) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.tracerWith((tracer) =>
      tracer === nativeTracer
        ? effect
        : Effect.withSpan(
            Effect.onExit(effect, (exit) => Effect.annotateCurrentSpan("outcome", outcomeOf(exit))),
            name,
            { attributes: attributes(), captureStackTrace: false }
          )
    )

const ownSpan = (fiber: Fiber.RuntimeFiber<unknown, unknown>): Tracer.Span | undefined => {
  const span = fiber.currentSpan
  return span?._tag === "Span" ? span : undefined
}

const workerAttributes = (info: CallInfo): Record<string, unknown> => ({
  pool: info.pool,
  tool: info.tool,
  worker: info.workerId,
  pid: info.pid,
  ...(info.session === undefined ? {} : { session: info.session })
})

/** The enclosing `snakepit.pool.*` span learns which worker served the call. */
const annotateParent = (span: Tracer.Span, info: CallInfo) => {
  if (span.parent._tag !== "Some" || span.parent.value._tag !== "Span") return
  const parent = span.parent.value
  parent.attribute("worker", info.workerId)
  parent.attribute("pid", info.pid)
  if (info.session !== undefined) parent.attribute("session", info.session)
}

/**
 * Runs one call on a worker with its telemetry sink. Under a recording tracer the call runs in a
 * `snakepit.worker.call` span, the parent of the spans Python made; under the built-in one the
 * sink only carries the tool's log records.
 */
export const workerCall = <A, E>(
  info: CallInfo,
  dropped: DroppedMetrics,
  run: (telemetry: TelemetrySink) => Effect.Effect<A, E>
): Effect.Effect<A, E> =>
  Effect.withFiberRuntime((fiber) => {
    if (fiber.currentTracer === nativeTracer) return run(makeSink(fiber, info, undefined, dropped))
    return Effect.withSpan(
      Effect.withFiberRuntime((inner) => {
        const span = ownSpan(inner)
        if (span !== undefined) annotateParent(span, info)
        return run(makeSink(inner, info, span, dropped))
      }),
      "snakepit.worker.call",
      { attributes: workerAttributes(info), captureStackTrace: false }
    )
  })

/**
 * A stream's telemetry sink; under a recording tracer with a `snakepit.worker.stream` span that
 * lasts as long as the scope (the stream), the parent of the spans Python made.
 */
export const workerStream = (
  info: CallInfo,
  dropped: DroppedMetrics
): Effect.Effect<TelemetrySink, never, Scope.Scope> =>
  Effect.withFiberRuntime((fiber) => {
    if (fiber.currentTracer === nativeTracer) return Effect.succeed(makeSink(fiber, info, undefined, dropped))
    return Effect.map(
      Effect.makeSpanScoped("snakepit.worker.stream", {
        attributes: workerAttributes(info),
        captureStackTrace: false
      }),
      (span) => {
        annotateParent(span, info)
        return makeSink(fiber, info, span, dropped)
      }
    )
  })
