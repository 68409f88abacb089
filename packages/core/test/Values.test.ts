/**
 * Rich values against real workers: numpy arrays, Arrow tables, dates and the rest of
 * docs/values.md, both ways, byte-exact, on both transports, with numpy/pandas/pyarrow installed
 * (a venv made from the package index, kept in .test-venvs/data) and without them (the suite's Python).
 */
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { NDArray, Snakepit, type SnakepitOptions, type SnakepitService, Tool } from "@snakepit/core"
import { Fixtures, Processes, Venv } from "@snakepit/testkit"
import { type Table, tableFromArrays } from "apache-arrow"
import { Effect, Schema } from "effect"

const fixtures = fileURLToPath(new URL("./fixtures/python", import.meta.url))
const dataVenv = Venv.withPackages({
  name: "data",
  dir: fileURLToPath(new URL("../../../.test-venvs", import.meta.url)),
  packages: ["numpy", "pandas", "pyarrow", "pydantic"],
  imports: ["numpy", "pandas", "pyarrow", "pydantic"],
  shareModulesOf: Venv.suitePython()
})
if (dataVenv._tag === "Unavailable")
  console.warn(`Values.test.ts: numpy/pandas/pyarrow tests SKIPPED: ${dataVenv.reason}`)

const options = (python: string, transport: "local" | "grpc"): SnakepitOptions => ({
  size: 1,
  python,
  transport,
  adapter: "rich_values:RichValues",
  pythonPath: [fixtures],
  callTimeout: "60 seconds"
})

const withRich = <A, E>(
  python: string,
  transport: "local" | "grpc",
  use: (pool: SnakepitService) => Effect.Effect<A, E>
) => Fixtures.withPool(use, options(python, transport))

const bytesOf = (value: unknown) => Buffer.from(value as Uint8Array)

describe.skipIf(dataVenv._tag !== "Ready")("with numpy, pandas and pyarrow", () => {
  const python = dataVenv._tag === "Ready" ? dataVenv.python : ""
  for (const transport of ["local", "grpc"] as const) {
    it.live(`ndarrays both ways, byte-exact (${transport})`, () =>
      withRich(python, transport, (pool) =>
        Effect.gen(function* () {
          for (const [dtype, shape] of [
            ["float64", [2, 3]],
            ["int64", [4]],
            ["uint8", [3, 1]],
            ["bool", [5]],
            ["float32", [0]],
            ["int16", [2, 2, 2]]
          ] as const) {
            const got = (yield* pool.execute("ndarray", { dtype, shape })) as NDArray
            expect(got).toBeInstanceOf(NDArray)
            expect([got.dtype, got.shape]).toEqual([dtype, shape])
            // The bytes Python sees for the same array, sent back as bytes.
            const seen = (yield* pool.execute("kind", { value: got })) as Record<string, unknown>
            expect(seen).toMatchObject({ type: "numpy.ndarray", dtype, shape, writable: true })
            expect(Buffer.compare(bytesOf(seen.bytes), Buffer.from(got.bytes))).toBe(0)
          }
          const fortran = (yield* pool.execute("ndarray", {
            dtype: "float64",
            shape: [2, 3],
            fortran: true
          })) as NDArray
          expect(Array.from(fortran.data as Float64Array)).toEqual([0, 1, 2, 3, 4, 5])
          const bare = new Float64Array([1.5, -2, Number.MAX_VALUE, Number.MIN_VALUE])
          const echoed = (yield* pool.execute("echo", { value: bare })) as NDArray
          expect(echoed.dtype).toBe("float64")
          expect(Buffer.compare(Buffer.from(echoed.bytes), Buffer.from(bare.buffer))).toBe(0)
          const big = new NDArray("int64", new BigInt64Array([1n, -(2n ** 63n), 2n ** 63n - 1n]))
          expect(((yield* pool.execute("echo", { value: big })) as NDArray).data).toEqual(big.data)
          expect(yield* pool.execute("numpy_scalars")).toEqual([7, 0.5, true, 255])
        })
      )
    )

    it.live(`Arrow tables and DataFrames both ways (${transport})`, () =>
      withRich(python, transport, (pool) =>
        Effect.gen(function* () {
          const frame = (yield* pool.execute("frame", { rows: 1000 })) as Table
          expect(frame.numRows).toBe(1000)
          expect(frame.schema.fields.map((f) => f.name)).toEqual(["i", "x", "s"])
          expect(frame.get(999)?.toJSON()).toEqual({ i: 999n, x: 499.5, s: "r999" })
          const table = tableFromArrays({ a: new Float64Array([1, 2, 3]), b: ["x", "y", "z"] })
          expect(yield* pool.execute("kind", { value: table })).toMatchObject({
            type: "pyarrow.lib.Table",
            rows: 3,
            columns: ["a", "b"]
          })
          const back = (yield* pool.execute("echo", { value: table })) as Table
          expect(back.toArray().map((row) => row.toJSON())).toEqual(table.toArray().map((row) => row.toJSON()))
        })
      )
    )
  }

  it.live(
    "on plain node, apache-arrow loads on first need, and its Tables are the user's own class both ways",
    () =>
      Effect.gen(function* () {
        // Not in this process: vite-node, which runs the tests, cannot resolve the way node does.
        const host = fileURLToPath(new URL("./fixtures/hosts/arrow-host.mjs", import.meta.url))
        const { stdout } = yield* Processes.runToCompletion(process.execPath, [
          host,
          JSON.stringify({ python, pythonPath: fixtures })
        ])
        expect(JSON.parse(stdout.trim().split("\n").at(-1)!)).toEqual({
          kind: expect.objectContaining({ type: "pyarrow.lib.Table", rows: 3, columns: ["a"] }),
          frameIsTable: true,
          rows: 10,
          lazy: true
        })
      }),
    120_000
  )

  it.live("dates, Decimal, UUID, sets, dataclasses, NamedTuples and pydantic models", () =>
    withRich(python, "local", (pool) =>
      Effect.gen(function* () {
        expect(yield* pool.execute("plain")).toEqual({
          when: new Date("2024-05-06T07:08:09.123Z"),
          naive: new Date("2024-05-06T07:08:09Z"),
          day: new Date("2024-05-06T00:00:00Z"),
          price: "12.30",
          id: "12345678-1234-5678-1234-567812345678",
          tags: ["only"],
          point: { x: 1.5, y: 2.5 },
          pair: { left: 1, right: "a" },
          pairs: [{ left: 2, right: "b" }]
        })
        expect(yield* pool.execute("model")).toEqual({ name: "m", at: new Date("2024-01-02T00:00:00Z") })
        expect(yield* pool.execute("kind", { value: new Date("2024-05-06T07:08:09.123Z") })).toMatchObject({
          type: "datetime.datetime",
          iso: "2024-05-06T07:08:09.123000+00:00"
        })
      })
    )
  )

  it.live("what cannot cross is a typed error naming the type and the path, and the pool keeps serving", () =>
    withRich(python, "local", (pool) =>
      Effect.gen(function* () {
        const objects = yield* Effect.flip(pool.execute("object_array"))
        expect(objects._tag).toBe("PythonError")
        expect(objects.message).toContain("result.bad[0]")
        expect(objects.message).toContain("dtype object")
        const other = yield* Effect.flip(pool.execute("unsendable"))
        expect(other.message).toContain("result.bad[1]: a builtins.object cannot be sent to the host")
        const big = yield* Effect.flip(pool.execute("too_big", { n: 10_000_000 }))
        expect(big).toMatchObject({ _tag: "PythonError", type: "ResultTooLarge" })
        expect(big.message).toContain("numpy.ndarray of 80000000 bytes is over the limit")
        expect(yield* pool.execute("echo", { value: 1 })).toBe(1)
      })
    )
  )

  it.live("Tool.make decodes results: a wrong shape is a ParseError naming the path", () =>
    withRich(python, "local", (pool) =>
      Effect.gen(function* () {
        const echo = Tool.make({
          name: "echo",
          args: Schema.Struct({ value: Schema.Unknown }),
          result: Schema.Struct({ x: Schema.Number })
        })
        const client = yield* Tool.client({ echo }).pipe(Effect.provideService(Snakepit, pool))
        expect(yield* client.echo({ value: { x: 1 } })).toEqual({ x: 1 })
        const error = yield* Effect.flip(client.echo({ value: { x: "one" } }))
        expect(error._tag).toBe("ParseError")
        expect(error.message).toContain('["x"]')
        expect(yield* client.echo({ value: { x: 2 } })).toEqual({ x: 2 })
      })
    )
  )
})

describe("validateArguments", () => {
  it.live("arguments that do not fit the annotations are InvalidArguments before the tool runs", () =>
    Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          const error = yield* Effect.flip(pool.execute("ndarray", { dtype: "int8", shape: [2, "x"] }))
          expect(error).toMatchObject({ _tag: "InvalidArguments", path: "args.shape[1]" })
          expect(error.message).toContain("parameter 'shape' at args.shape[1]: expected int, got str")
          const flag = yield* Effect.flip(pool.execute("ndarray", { dtype: 8, shape: [] }))
          expect(flag.message).toContain("expected str, got int")
          expect(yield* pool.execute("echo", { value: [1, "any"] })).toEqual([1, "any"])
        }),
      { ...options(Venv.suitePython(), "local"), validateArguments: true }
    )
  )

  it.live("off by default: the tool gets what was sent", () =>
    Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          expect(yield* pool.execute("kind", { value: "x" })).toEqual({ type: "builtins.str" })
          const error = yield* Effect.flip(pool.execute("ndarray", { dtype: "int8", shape: [2, "x"] }))
          expect(error._tag).toBe("PythonError")
        }),
      options(Venv.suitePython(), "local")
    )
  )
})

describe("without numpy, pandas or pyarrow in the worker", () => {
  it.live("an NDArray arrives as its raw bytes, an Arrow table as its IPC stream, a Date as a datetime", () =>
    withRich(Venv.suitePython(), "local", (pool) =>
      Effect.gen(function* () {
        const array = NDArray.of(new Float32Array([1, 2, 3]))
        expect(yield* pool.execute("kind", { value: array })).toMatchObject({ type: "builtins.bytes" })
        expect(bytesOf(yield* pool.execute("echo", { value: array }))).toEqual(Buffer.from(array.bytes))
        const table = tableFromArrays({ a: new Int32Array([1]) })
        expect(yield* pool.execute("kind", { value: table })).toMatchObject({ type: "builtins.bytes" })
        const date = new Date("2020-01-01T00:00:00Z")
        expect(yield* pool.execute("echo", { value: date })).toEqual(date)
        expect((yield* Effect.flip(pool.execute("frame", { rows: 1 })))._tag).toBe("PythonError")
        expect(yield* pool.execute("echo", { value: "still serving" })).toBe("still serving")
      })
    )
  )
})
