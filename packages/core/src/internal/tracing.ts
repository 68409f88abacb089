/**
 * Spans on the call path only when a tracer that records them is installed.
 *
 * @internal
 */
import { Effect, type Tracer } from "effect"

/**
 * Effect's built-in tracer: it keeps spans in memory for nobody. Read once, since the default
 * services are shared by every runtime.
 */
const nativeTracer: Tracer.Tracer = Effect.runSync(Effect.tracer)

/**
 * `Effect.withSpan` when a real tracer (OpenTelemetry, for instance) is provided; the effect
 * itself under the built-in one. A span costs about 20 µs and several allocations per call,
 * which is a tenth of the pool's whole overhead (see docs/adr/0004).
 */
export const withCallSpan =
  (name: string, attributes: () => Record<string, unknown>) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.tracerWith((tracer) =>
      tracer === nativeTracer
        ? effect
        : Effect.withSpan(effect, name, { attributes: attributes(), captureStackTrace: false })
    )
