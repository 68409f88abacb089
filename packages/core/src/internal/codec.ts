/**
 * Values at the boundary: JSON, with binary values carried raw beside it (the same rules as
 * python/snakepit_bridge/values.py). Where the JSON holds something it cannot carry, it holds a
 * tagged object `{"__snakepit__": kind, ...}` and the message says so, so the reader knows to
 * walk the value:
 *
 * - `{"__snakepit__": "bytes", "blob": i}`: a `Uint8Array` (a `Buffer`, an `ArrayBuffer`) whose
 *   content is blob `i`; Python sees `bytes`.
 * - `{"__snakepit__": "ndarray", "dtype", "shape", "blob": i}`: an `NDArray` (or another
 *   TypedArray, one-dimensional), little-endian bytes in blob `i`; Python sees a numpy array.
 * - `{"__snakepit__": "arrow", "blob": i}`: an apache-arrow `Table` as an Arrow IPC stream in blob
 *   `i`; Python sees a pyarrow `Table`.
 * - `{"__snakepit__": "datetime", "ms": n}`: a `Date` (milliseconds since the epoch, UTC);
 *   Python sees an aware UTC `datetime`.
 *
 * The table of every conversion, both ways, is docs/values.md.
 *
 * Encoding refuses, with the path of the problem, what JSON would silently change or drop:
 * functions, symbols, bigints, non-finite numbers, `undefined` in arrays, cycles, class
 * instances without `toJSON`, values nested deeper than {@link MAX_DEPTH}, and getters,
 * `toJSON`s or Proxies that throw.
 */

import { isDType, NDArray } from "../NDArray.js"
import * as Arrow from "./arrow.js"

/** Deepest nesting accepted in either direction (Python uses the same limit). */
export const MAX_DEPTH = 256

/** The key of tagged objects; reserved in user objects. */
export const TAG = "__snakepit__"

/** A value ready to send: JSON text, the blobs it refers to, and whether it holds tagged objects. */
export interface Encoded {
  readonly json: string
  readonly blobs: ReadonlyArray<Uint8Array>
  readonly tagged: boolean
}

/** Where and why a value cannot travel. */
export interface Problem {
  readonly path: string
  readonly reason: string
}

class Refused {
  constructor(readonly problem: Problem) {}
}

const describe = (value: object): string => {
  try {
    return value.constructor?.name ?? "object"
  } catch {
    return "object"
  }
}

const messageOf = (error: unknown): string => (error instanceof Error ? error.message : String(error))

interface Walk {
  readonly blobs: Array<Uint8Array>
  readonly ancestors: Set<object>
  tagged: boolean
}

const bytesTag = (walk: Walk, bytes: Uint8Array) => {
  walk.blobs.push(bytes)
  return { [TAG]: "bytes", blob: walk.blobs.length - 1 }
}

const ndarrayTag = (walk: Walk, array: NDArray) => {
  walk.blobs.push(array.bytes)
  return { [TAG]: "ndarray", dtype: array.dtype, shape: array.shape, blob: walk.blobs.length - 1 }
}

/**
 * `value` as JSON can carry it: the same object when nothing below it needs replacing, else a
 * copy with binary values tagged and `toJSON` applied. Throws {@link Refused}.
 */
const walkValue = (value: unknown, path: string, depth: number, walk: Walk): unknown => {
  switch (typeof value) {
    case "string":
    case "boolean":
      return value
    case "number":
      if (Number.isFinite(value)) return value
      throw new Refused({ path, reason: `${value} is not representable in JSON` })
    case "bigint":
    case "function":
    case "symbol":
      throw new Refused({ path, reason: `a ${typeof value} is not JSON-serialisable` })
    case "undefined":
      throw new Refused({ path, reason: "undefined is not JSON-serialisable" })
  }
  if (value === null) return null
  if (depth > MAX_DEPTH) throw new Refused({ path, reason: `nested deeper than ${MAX_DEPTH} levels` })
  const object = value as object
  if (walk.ancestors.has(object)) throw new Refused({ path, reason: "circular reference" })
  try {
    if (object instanceof Uint8Array) return bytesTag(walk, object)
    if (object instanceof ArrayBuffer) return bytesTag(walk, new Uint8Array(object))
    if (object instanceof NDArray) return ndarrayTag(walk, object)
    if (object instanceof Date) {
      const ms = object.getTime()
      if (Number.isNaN(ms)) throw new Refused({ path, reason: "an invalid Date cannot be sent" })
      walk.tagged = true
      return { [TAG]: "datetime", ms }
    }
    if (ArrayBuffer.isView(object) && !(object instanceof DataView)) {
      return ndarrayTag(walk, NDArray.of(object as Uint8ClampedArray))
    }
    if (Arrow.isTable(object)) {
      walk.blobs.push(Arrow.get()!.tableToIPC(object, "stream"))
      return { [TAG]: "arrow", blob: walk.blobs.length - 1 }
    }
    const toJSON = (object as { toJSON?: unknown }).toJSON
    if (typeof toJSON === "function") {
      return walkValue(toJSON.call(object, path), path, depth, walk) ?? null
    }
    walk.ancestors.add(object)
    try {
      if (Array.isArray(object)) {
        let copy: Array<unknown> | undefined
        for (let i = 0; i < object.length; i++) {
          const item: unknown = object[i]
          const out = walkValue(item, `${path}[${i}]`, depth + 1, walk)
          if (out !== item && copy === undefined) copy = object.slice(0, i)
          if (copy !== undefined) copy.push(out)
        }
        return copy ?? object
      }
      const proto = Object.getPrototypeOf(object)
      if (proto !== Object.prototype && proto !== null) {
        throw new Refused({
          path,
          reason: `a ${describe(object)} is not JSON-serialisable (use a plain object or array)`
        })
      }
      let copy: Record<string, unknown> | undefined
      const keys = Object.keys(object)
      for (let i = 0; i < keys.length; i++) {
        const key = keys[i]!
        const item = (object as Record<string, unknown>)[key]
        // JSON omits undefined properties, as JS callers expect.
        const out = item === undefined ? undefined : walkValue(item, `${path}.${key}`, depth + 1, walk)
        if (out !== item && copy === undefined) {
          copy = {}
          for (let j = 0; j < i; j++) copy[keys[j]!] = (object as Record<string, unknown>)[keys[j]!]
        }
        if (copy !== undefined && out !== undefined) copy[key] = out
      }
      return copy ?? object
    } finally {
      walk.ancestors.delete(object)
    }
  } catch (error) {
    if (error instanceof Refused) throw error
    // A getter, toJSON or Proxy trap that threw, or a stack overflow in a toJSON.
    throw new Refused({ path, reason: `reading it threw: ${messageOf(error)}` })
  }
}

/** Encodes `value` (found at `path`, for messages), or says where and why it cannot travel. */
export const encode = (value: unknown, path: string): Encoded | Problem => {
  const walk: Walk = { blobs: [], ancestors: new Set(), tagged: false }
  let carried: unknown
  try {
    carried = walkValue(value, path, 0, walk)
  } catch (error) {
    if (error instanceof Refused) return error.problem
    throw error
  }
  return { json: JSON.stringify(carried), blobs: walk.blobs, tagged: walk.tagged || walk.blobs.length > 0 }
}

/** True when `encode` refused the value. */
export const isProblem = (result: Encoded | Problem): result is Problem => "reason" in result

/** A tagged object of a kind this side does not know, or one that does not fit its kind. */
export class MalformedValue extends Error {}

/**
 * The decoded value with every tagged object replaced by what it stands for. `value` is fresh
 * from `JSON.parse`, so it is changed in place; its depth is whatever `JSON.parse` accepted (a
 * worker cannot send deeper than Python's own recursion limit). Throws {@link MalformedValue}.
 */
export const decodeTagged = (value: unknown, blobs: ReadonlyArray<Uint8Array>): unknown => {
  if (typeof value !== "object" || value === null) return value
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = decodeTagged(value[i], blobs)
    return value
  }
  const record = value as Record<string, unknown>
  const kind = record[TAG]
  if (kind !== undefined) return decodeKind(kind, record, blobs)
  for (const key in record) record[key] = decodeTagged(record[key], blobs)
  return record
}

const blobOf = (kind: string, record: Record<string, unknown>, blobs: ReadonlyArray<Uint8Array>): Uint8Array => {
  const index = record.blob
  const blob = typeof index === "number" && Number.isInteger(index) && index >= 0 ? blobs[index] : undefined
  if (blob === undefined) throw new MalformedValue(`a ${kind} value refers to a missing blob ${String(index)}`)
  return blob
}

const decodeKind = (kind: unknown, record: Record<string, unknown>, blobs: ReadonlyArray<Uint8Array>): unknown => {
  switch (kind) {
    case "bytes":
      return blobOf(kind, record, blobs)
    case "ndarray": {
      const { dtype, shape } = record
      if (!isDType(dtype) || !Array.isArray(shape)) {
        throw new MalformedValue(
          `an ndarray value with dtype ${JSON.stringify(dtype)} and shape ${JSON.stringify(shape)}`
        )
      }
      try {
        return NDArray.fromBytes(dtype, shape as ReadonlyArray<number>, blobOf(kind, record, blobs))
      } catch (error) {
        throw new MalformedValue(`a malformed ndarray value: ${messageOf(error)}`)
      }
    }
    case "arrow": {
      let arrow: ReturnType<typeof Arrow.get>
      try {
        arrow = Arrow.get()
      } catch (error) {
        // Not the worker's fault, but it ends the same way: the value cannot be read here.
        throw new MalformedValue(`an Arrow table arrived and apache-arrow could not be loaded: ${messageOf(error)}`)
      }
      // Only on a node that cannot require an ES module, in a worker not started by Worker.make.
      if (arrow === undefined) throw new MalformedValue("an Arrow table arrived before apache-arrow was loaded")
      try {
        return arrow.tableFromIPC(blobOf(kind, record, blobs))
      } catch (error) {
        throw new MalformedValue(`a malformed Arrow value: ${messageOf(error)}`)
      }
    }
    case "datetime": {
      const ms = record.ms
      const date = typeof ms === "number" ? new Date(ms) : undefined
      if (date === undefined || Number.isNaN(date.getTime())) {
        throw new MalformedValue(`a datetime value of ${JSON.stringify(ms)} ms`)
      }
      return date
    }
  }
  throw new MalformedValue(`unknown value kind ${JSON.stringify(kind)}`)
}
