import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { ThreadLimits } from "../src/index.js"
import { findJsonProblem } from "../src/internal/json.js"
import { extractTraceback, LineTail } from "../src/internal/stderr.js"

describe("findJsonProblem", () => {
  it("accepts what JSON carries faithfully", () => {
    expect(findJsonProblem({ a: 1, b: "x", c: [true, null, { d: 2.5 }], e: undefined, f: new Date(0) })).toBeUndefined()
    expect(findJsonProblem(Object.create(null))).toBeUndefined()
  })

  it("names the path of the first problem", () => {
    expect(findJsonProblem({ a: { b: [1, 2, Number.POSITIVE_INFINITY] } })).toEqual({
      path: "args.a.b[2]",
      reason: "Infinity is not representable in JSON"
    })
    expect(findJsonProblem({ s: new Set([1]) })?.reason).toContain("Set")
    class Point {
      x = 1
    }
    expect(findJsonProblem({ p: new Point() })?.reason).toContain("Point")
  })

  it("allows shared references but not cycles", () => {
    const shared = { v: 1 }
    expect(findJsonProblem({ a: shared, b: shared })).toBeUndefined()
    const cycle: Array<unknown> = []
    cycle.push(cycle)
    expect(findJsonProblem(cycle)).toEqual({ path: "args[0]", reason: "circular reference" })
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
