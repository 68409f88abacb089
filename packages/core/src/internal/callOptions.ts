/**
 * Per-call options checked before a worker is leased: a bad value is `InvalidArguments` naming
 * the option, and nothing after it can throw on it (a lease taken while an option still had to be
 * decoded leaked its worker when decoding threw).
 *
 * @internal
 */
import { Duration, Effect, Option } from "effect"
import { InvalidArguments } from "../errors.js"
import type { CallOptions } from "../Snakepit.js"

/** What a call runs with once its options are known good. */
export interface CheckedCall {
  readonly session: string | undefined
  /** The call's timeout, or its stream's idle timeout; undefined when infinite. */
  readonly timeout: Duration.Duration | undefined
  readonly buffer: number | undefined
  readonly attachments: Readonly<Record<string, Uint8Array>> | undefined
  /** The caller (a router such as the cluster) says the session's state was lost elsewhere. */
  readonly sessionMoved: boolean
}

const refuse = (tool: string, option: string, reason: string) =>
  Effect.fail(new InvalidArguments({ tool, path: `options.${option}`, reason }))

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

/** Checks `options` (as a caller may pass anything from JavaScript) against the pool's defaults. */
export const check = (
  tool: string,
  options: CallOptions | undefined,
  defaultTimeout: Duration.Duration
): Effect.Effect<CheckedCall, InvalidArguments> => {
  if (options === undefined) {
    return Effect.succeed({
      session: undefined,
      timeout: Duration.isFinite(defaultTimeout) ? defaultTimeout : undefined,
      buffer: undefined,
      attachments: undefined,
      sessionMoved: false
    })
  }
  if (!isRecord(options)) return refuse(tool, "", "expected an object of call options")
  const { session, timeout, buffer, attachments, sessionMoved } = options as Record<string, unknown>
  if (session !== undefined && typeof session !== "string") return refuse(tool, "session", "expected a string")
  let resolved = defaultTimeout
  if (timeout !== undefined) {
    const decoded = Duration.decodeUnknown(timeout)
    const numeric = typeof timeout === "number" ? timeout : Number.NaN
    if (
      Option.isNone(decoded) ||
      (typeof timeout === "number" && (Number.isNaN(numeric) || numeric <= 0)) ||
      (typeof timeout === "string" && timeout.trimStart().startsWith("-")) ||
      Duration.isZero(decoded.value)
    ) {
      return refuse(
        tool,
        "timeout",
        `expected a duration greater than zero, like "5 seconds", "500 millis", a number of milliseconds, or Duration.infinity; got ${JSON.stringify(String(timeout))}`
      )
    }
    resolved = decoded.value
  }
  if (buffer !== undefined && !(typeof buffer === "number" && Number.isSafeInteger(buffer) && buffer >= 1)) {
    return refuse(tool, "buffer", `expected a positive integer; got ${String(buffer)}`)
  }
  if (attachments !== undefined) {
    if (!isRecord(attachments)) return refuse(tool, "attachments", "expected an object of Uint8Array values")
    for (const [key, value] of Object.entries(attachments)) {
      if (!(value instanceof Uint8Array)) {
        return refuse(tool, `attachments.${key}`, "expected a Uint8Array (a Buffer is one)")
      }
    }
  }
  if (sessionMoved !== undefined && typeof sessionMoved !== "boolean") {
    return refuse(tool, "sessionMoved", "expected a boolean")
  }
  return Effect.succeed({
    session,
    timeout: Duration.isFinite(resolved) ? resolved : undefined,
    buffer,
    attachments: attachments as Readonly<Record<string, Uint8Array>> | undefined,
    sessionMoved: sessionMoved === true
  })
}
