/**
 * What a transport adds to the process half of a worker: the calls. Both transports (the local
 * channel and gRPC) implement it, and map the worker's failures to the same typed errors here.
 */

import { Option, Schema } from "effect"
import { InvalidArguments, PythonError, ToolNotFound, type WorkerCallError } from "../errors.js"
import type { ToolDescription } from "../Snakepit.js"
import * as Tool from "../Tool.js"
import type { PoolWorker } from "../WorkerFactory.js"

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
