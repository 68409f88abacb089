import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { ThreadLimits } from "../src/index.js"
import * as Codec from "../src/internal/codec.js"
import { extractTraceback, LineTail } from "../src/internal/stderr.js"

const problemOf = (value: unknown) => {
  const encoded = Codec.encode(value, "args")
  return Codec.isProblem(encoded) ? encoded : undefined
}

const nested = (depth: number): unknown => {
  let value: unknown = 1
  for (let i = 0; i < depth; i++) value = [value]
  return value
}

describe("Codec.encode", () => {
  it("accepts what JSON carries faithfully, and sends it unchanged", () => {
    const args = { a: 1, b: "x", c: [true, null, { d: 2.5 }], e: undefined }
    const encoded = Codec.encode(args, "args")
    expect(encoded).toEqual({ json: JSON.stringify(args), blobs: [], tagged: false })
    expect(problemOf(Object.create(null))).toBeUndefined()
    // A Date crosses as a datetime (docs/values.md), other toJSONs are applied as JSON.stringify would.
    expect(Codec.encode({ at: new Date(0) }, "args")).toMatchObject({
      json: '{"at":{"__snakepit__":"datetime","ms":0}}',
      tagged: true
    })
    expect(Codec.encode({ at: { toJSON: () => "x" } }, "args")).toMatchObject({ json: '{"at":"x"}', tagged: false })
    expect(problemOf({ at: new Date(Number.NaN) })).toEqual({
      path: "args.at",
      reason: "an invalid Date cannot be sent"
    })
  })

  it("names the path of the first problem", () => {
    expect(problemOf({ a: { b: [1, 2, Number.POSITIVE_INFINITY] } })).toEqual({
      path: "args.a.b[2]",
      reason: "Infinity is not representable in JSON"
    })
    expect(problemOf({ s: new Set([1]) })?.reason).toContain("Set")
    class Point {
      x = 1
    }
    expect(problemOf({ p: new Point() })?.reason).toContain("Point")
    expect(problemOf({ f: () => 1 })?.path).toBe("args.f")
    expect(problemOf({ n: 1n })?.reason).toContain("bigint")
  })

  it("allows shared references but not cycles", () => {
    const shared = { v: 1 }
    expect(problemOf({ a: shared, b: shared })).toBeUndefined()
    const cycle: Array<unknown> = []
    cycle.push(cycle)
    expect(problemOf(cycle)).toEqual({ path: "args[0]", reason: "circular reference" })
  })

  it("refuses nesting deeper than the limit with a path, however deep (no RangeError)", () => {
    expect(problemOf(nested(Codec.MAX_DEPTH))).toBeUndefined()
    expect(problemOf(nested(Codec.MAX_DEPTH + 2))?.reason).toBe(`nested deeper than ${Codec.MAX_DEPTH} levels`)
    expect(problemOf({ deep: nested(10_000) })?.path.startsWith("args.deep[0][0]")).toBe(true)
  })

  it("turns a throwing getter, toJSON or Proxy into a problem at its path", () => {
    const getter = {
      get boom(): number {
        throw new Error("getter threw")
      }
    }
    expect(problemOf({ g: getter })).toEqual({ path: "args.g", reason: "reading it threw: getter threw" })
    const toJSON = {
      toJSON() {
        throw new Error("toJSON threw")
      }
    }
    expect(problemOf({ t: [toJSON] })).toEqual({ path: "args.t[0]", reason: "reading it threw: toJSON threw" })
    const proxy = new Proxy(
      {},
      {
        ownKeys() {
          throw new Error("trap threw")
        }
      }
    )
    expect(problemOf({ p: proxy })?.reason).toContain("trap threw")
  })

  it("carries binary values as blobs, and decodes them back as Uint8Arrays", () => {
    const bytes = new Uint8Array([1, 2, 3])
    const args = { a: bytes, b: [Buffer.from("xy")], c: new Uint8Array([9]).buffer }
    const encoded = Codec.encode(args, "args") as Codec.Encoded
    expect(encoded.tagged).toBe(true)
    expect(encoded.blobs.length).toBe(3)
    // The caller's object is not changed; the JSON holds tags instead.
    expect(args.a).toBe(bytes)
    // What the other side receives: plain byte arrays.
    const received = encoded.blobs.map((b) => new Uint8Array(b))
    const decoded = Codec.decodeTagged(JSON.parse(encoded.json), received) as Record<string, unknown>
    expect(decoded.a).toEqual(bytes)
    expect(decoded.b).toEqual([new Uint8Array(Buffer.from("xy"))])
    expect(decoded.c).toEqual(new Uint8Array([9]))
  })

  it("refuses a tagged value of an unknown kind or a missing blob", () => {
    expect(() => Codec.decodeTagged({ [Codec.TAG]: "nope" }, [])).toThrow(Codec.MalformedValue)
    expect(() => Codec.decodeTagged({ [Codec.TAG]: "bytes", blob: 1 }, [new Uint8Array()])).toThrow(
      Codec.MalformedValue
    )
    expect(() => Codec.decodeTagged({ [Codec.TAG]: "bytes", blob: -1 }, [new Uint8Array()])).toThrow(
      Codec.MalformedValue
    )
  })
})

describe("stderr tail", () => {
  it("keeps only the last lines", () => {
    const tail = new LineTail(2)
    for (const line of ["a", "b", "c"]) tail.push(line)
    expect(tail.text()).toBe("b\nc")
  })

  it("extracts the last traceback up to its exception line", () => {
    const text = [
      "INFO starting",
      "Traceback (most recent call last):",
      '  File "x.py", line 1, in <module>',
      "    import nope",
      "ModuleNotFoundError: No module named 'nope'",
      "INFO exiting"
    ].join("\n")
    expect(extractTraceback(text)).toBe(
      [
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "    import nope",
        "ModuleNotFoundError: No module named 'nope'"
      ].join("\n")
    )
    expect(extractTraceback("no traceback here")).toBeNull()
  })
})

describe("ThreadLimits", () => {
  it.effect("a partial override merges with the defaults", () =>
    Effect.gen(function* () {
      const limits = yield* ThreadLimits.resolve({ openblas: 8 })
      expect(ThreadLimits.toEnv(limits)).toEqual({
        OMP_NUM_THREADS: "1",
        OPENBLAS_NUM_THREADS: "8",
        MKL_NUM_THREADS: "1",
        NUMEXPR_NUM_THREADS: "1",
        VECLIB_MAXIMUM_THREADS: "1"
      })
    })
  )

  it.effect("rejects bad values and unknown keys with the key named", () =>
    Effect.gen(function* () {
      const negative = yield* Effect.flip(ThreadLimits.resolve({ omp: -1 }))
      expect(negative.key).toBe("threadLimits.omp")
      const fractional = yield* Effect.flip(ThreadLimits.resolve({ numexpr: 1.5 }))
      expect(fractional.value).toBe("1.5")
      const unknown = yield* Effect.flip(ThreadLimits.resolve({ blis: 2 } as never))
      expect(unknown.key).toBe("threadLimits.blis")
    })
  )
})
