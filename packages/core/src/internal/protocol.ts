/**
 * What a transport adds to the process half of a worker: the calls. Both transports (the local
 * channel and gRPC) implement it, and map the worker's failures to the same typed errors here.
 */

import { Option, Schema } from "effect"
import { InvalidArguments, PythonError, ToolNotFound, type WorkerCallError } from "../errors.js"
import type { ToolDescription } from "../Snakepit.js"
import * as Tool from "../Tool.js"
import type { PoolWorker, TelemetryItem } from "../WorkerFactory.js"

/** The calls of a worker over one transport. */
export interface Protocol
  extends Pick<
    PoolWorker,
    "executeEncoded" | "executeStream" | "health" | "describeTools" | "cleanupSession" | "settled" | "failed"
  > {
  /** Where the worker is: "local" for the private channel, else the gRPC address. */
  readonly address: string
}

/** A tool failure as the worker reports it (the same fields on every transport). */
export interface FailureInfo {
  readonly kind: string
  readonly type: string
  readonly message: string
  readonly traceback: string
  readonly available: ReadonlyArray<string>
  readonly path: string
}

/** The typed error for a failure the worker reported. */
export const toolFailure = (workerId: string, tool: string, failure: FailureInfo): WorkerCallError => {
  switch (failure.kind) {
    case "tool_not_found":
      return new ToolNotFound({ tool, available: [...failure.available], workerId })
    case "invalid_arguments":
      return new InvalidArguments({ tool, reason: failure.message, path: failure.path === "" ? null : failure.path })
    default:
      return new PythonError({
        tool,
        type: failure.type || "Error",
        message: failure.message,
        traceback: failure.traceback,
        workerId
      })
  }
}

/** A worker's description of one tool, as both transports deliver it. */
export interface RawToolSpec {
  readonly name: string
  readonly description: string
  readonly streaming: boolean
  readonly parameters: ReadonlyArray<{
    readonly name: string
    readonly type: string
    readonly required: boolean
    /** JSON text of the default; "" when none (or not representable). */
    readonly defaultJson: string
  }>
  /** `{params, returns}` as the worker sent it (JSON text or a value), when it did. */
  readonly types?: unknown
}

const decodeTypes = Schema.decodeUnknownOption(Tool.ToolTypes)
const typesOf = (raw: unknown) =>
  Option.getOrUndefined(decodeTypes(typeof raw === "string" ? (raw === "" ? undefined : safeParse(raw)) : raw))
const safeParse = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** The domain description of a tool. */
export const toolDescription = (spec: RawToolSpec): ToolDescription => ({
  name: spec.name,
  description: spec.description,
  streaming: spec.streaming,
  parameters: spec.parameters.map((p) => ({
    name: p.name,
    type: p.type,
    required: p.required,
    ...(p.defaultJson.length > 0 ? { default: JSON.parse(p.defaultJson) as unknown } : {})
  })),
  ...withTypes(typesOf(spec.types))
})

const withTypes = (types: Tool.ToolTypes | undefined) => (types === undefined ? {} : { types })

const record = (value: unknown): Readonly<Record<string, unknown>> =>
  typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : {}
const text = (value: unknown): string => (typeof value === "string" ? value : "")
const count = (value: unknown): number => (typeof value === "number" && Number.isFinite(value) ? value : 0)

/**
 * The telemetry items of a worker's message (a JSON array, docs/protocol.md "Telemetry"), in
 * domain form. Items it does not know are skipped: a newer worker may send more kinds.
 */
export const telemetryItems = (raw: unknown): ReadonlyArray<TelemetryItem> => {
  if (!Array.isArray(raw)) return []
  const items: Array<TelemetryItem> = []
  for (const value of raw) {
    const item = record(value)
    switch (item.k) {
      case "start":
        items.push({
          _tag: "SpanStart",
          spanId: text(item.s),
          parentId: text(item.p),
          name: text(item.n),
          timeMicros: count(item.t),
          attributes: record(item.a)
        })
        break
      case "end": {
        const error = item.x === undefined ? undefined : record(item.x)
        items.push({
          _tag: "SpanEnd",
          spanId: text(item.s),
          timeMicros: count(item.t),
          attributes: record(item.a),
          events: (Array.isArray(item.ev) ? item.ev : []).map((e: unknown) => {
            const event = record(e)
            return { name: text(event.n), timeMicros: count(event.t), attributes: record(event.a) }
          }),
          error:
            error === undefined
              ? undefined
              : { type: text(error.type), message: text(error.message), traceback: text(error.traceback) }
        })
        break
      }
      case "log":
        items.push({
          _tag: "Log",
          level: count(item.l),
          logger: text(item.g),
          message: text(item.m),
          timeMicros: count(item.t),
          spanId: text(item.s),
          dropped: count(item.dropped)
        })
        break
      case "dropped":
        items.push({ _tag: "Dropped", logs: count(item.logs), spans: count(item.spans) })
        break
    }
  }
  return items
}
