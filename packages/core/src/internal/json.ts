/**
 * Encoding tool arguments as JSON, refusing what JSON would silently change or drop.
 */

/** Where and why a value cannot travel as JSON. */
export interface JsonProblem {
  readonly path: string
  readonly reason: string
}

const describe = (value: unknown): string => {
  if (value === null) return "null"
  if (typeof value !== "object") return typeof value
  return value.constructor?.name ?? "object"
}

/**
 * The first problem that makes `value` not faithfully JSON-serialisable, if any: functions,
 * symbols, bigints, non-finite numbers, `undefined` in arrays, cycles, and class instances
 * without `toJSON` (a Map would silently become `{}`).
 */
export const findJsonProblem = (value: unknown, path = "args", seen = new Set<object>()): JsonProblem | undefined => {
  switch (typeof value) {
    case "string":
    case "boolean":
      return undefined
    case "number":
      return Number.isFinite(value) ? undefined : { path, reason: `${value} is not representable in JSON` }
    case "bigint":
    case "function":
    case "symbol":
      return { path, reason: `a ${typeof value} is not JSON-serialisable` }
    case "undefined":
      return { path, reason: "undefined is not JSON-serialisable" }
  }
  if (value === null) return undefined
  const object = value as object
  if (seen.has(object)) return { path, reason: "circular reference" }
  if (typeof (object as { toJSON?: unknown }).toJSON === "function") return undefined
  seen.add(object)
  try {
    if (Array.isArray(object)) {
      for (let i = 0; i < object.length; i++) {
        const problem = findJsonProblem(object[i], `${path}[${i}]`, seen)
        if (problem) return problem
      }
      return undefined
    }
    const proto = Object.getPrototypeOf(object)
    if (proto !== Object.prototype && proto !== null) {
      return { path, reason: `a ${describe(object)} is not JSON-serialisable (use a plain object or array)` }
    }
    for (const [key, item] of Object.entries(object)) {
      if (item === undefined) continue // JSON omits undefined properties, as JS callers expect
      const problem = findJsonProblem(item, `${path}.${key}`, seen)
      if (problem) return problem
    }
    return undefined
  } finally {
    seen.delete(object)
  }
}
