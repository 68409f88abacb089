/**
 * `NDArray`: a numpy array on the host. Its bytes cross raw (no JSON on the way) in both
 * directions: a tool returning a bool/int/uint/float `ndarray` gives an `NDArray`, and an
 * `NDArray` (or any TypedArray other than a `Uint8Array`, which stays `bytes`) in a call's
 * arguments arrives in Python as a numpy array (raw `bytes` when numpy is not installed).
 *
 * @since 0.3.0
 */
import { Schema } from "effect"

/**
 * The numpy dtypes that travel raw (always little-endian on the wire).
 *
 * @since 0.3.0
 * @category models
 */
export type DType =
  | "bool"
  | "int8"
  | "int16"
  | "int32"
  | "int64"
  | "uint8"
  | "uint16"
  | "uint32"
  | "uint64"
  | "float16"
  | "float32"
  | "float64"

/**
 * The TypedArray each dtype's data is. `bool` is one byte per value (0 or 1); `float16` is the
 * raw bits (Node 20 has no `Float16Array`).
 *
 * @since 0.3.0
 * @category models
 */
export interface TypedArrays {
  readonly bool: Uint8Array
  readonly int8: Int8Array
  readonly int16: Int16Array
  readonly int32: Int32Array
  readonly int64: BigInt64Array
  readonly uint8: Uint8Array
  readonly uint16: Uint16Array
  readonly uint32: Uint32Array
  readonly uint64: BigUint64Array
  readonly float16: Uint16Array
  readonly float32: Float32Array
  readonly float64: Float64Array
}

/**
 * Any TypedArray an `NDArray` can hold.
 *
 * @since 0.3.0
 * @category models
 */
export type TypedArray = TypedArrays[DType] | Uint8ClampedArray

type Constructor = {
  readonly BYTES_PER_ELEMENT: number
  new (buffer: ArrayBuffer, offset: number, length: number): TypedArray
  new (length: number): TypedArray
}

const CONSTRUCTORS: Record<DType, Constructor> = {
  bool: Uint8Array,
  int8: Int8Array,
  int16: Int16Array,
  int32: Int32Array,
  int64: BigInt64Array,
  uint8: Uint8Array,
  uint16: Uint16Array,
  uint32: Uint32Array,
  uint64: BigUint64Array,
  float16: Uint16Array,
  float32: Float32Array,
  float64: Float64Array
}

/**
 * True for the dtype names this side knows.
 *
 * @since 0.3.0
 * @category guards
 */
export const isDType = (name: unknown): name is DType => typeof name === "string" && Object.hasOwn(CONSTRUCTORS, name)

const dtypeOf = (data: TypedArray): DType | undefined => {
  if (data instanceof Float64Array) return "float64"
  if (data instanceof Float32Array) return "float32"
  if (data instanceof Int32Array) return "int32"
  if (data instanceof BigInt64Array) return "int64"
  if (data instanceof Int16Array) return "int16"
  if (data instanceof Int8Array) return "int8"
  if (data instanceof Uint8Array || data instanceof Uint8ClampedArray) return "uint8"
  if (data instanceof Uint16Array) return "uint16"
  if (data instanceof Uint32Array) return "uint32"
  if (data instanceof BigUint64Array) return "uint64"
  return undefined
}

/**
 * A numpy array: `dtype`, `shape` (row-major, C order) and `data`, a TypedArray of
 * `shape`'s product elements.
 *
 * @since 0.3.0
 * @category models
 */
export class NDArray<D extends DType = DType> {
  /**
   * Throws a `RangeError` when `data` is not of `dtype`'s TypedArray or its length does not
   * match `shape` (default: one dimension, `data.length`).
   */
  constructor(
    readonly dtype: D,
    readonly data: TypedArrays[D],
    readonly shape: ReadonlyArray<number> = [data.length]
  ) {
    if (!(data instanceof CONSTRUCTORS[dtype])) {
      throw new RangeError(`an NDArray of dtype ${dtype} holds a ${CONSTRUCTORS[dtype].name}`)
    }
    let size = 1
    for (const n of shape) {
      if (!Number.isSafeInteger(n) || n < 0)
        throw new RangeError(`shape ${JSON.stringify(shape)} is not a list of sizes`)
      size *= n
    }
    if (size !== data.length) {
      throw new RangeError(`shape ${JSON.stringify(shape)} needs ${size} elements, data has ${data.length}`)
    }
  }

  /** An NDArray over `data` with the dtype its TypedArray implies (a `Uint8Array` is `uint8`). */
  static of<A extends TypedArray>(data: A, shape?: ReadonlyArray<number>): NDArray {
    const dtype = dtypeOf(data)
    if (dtype === undefined) throw new RangeError("not a TypedArray")
    const plain = data instanceof Uint8ClampedArray ? new Uint8Array(data.buffer, data.byteOffset, data.length) : data
    return new NDArray(dtype, plain as TypedArrays[DType], shape)
  }

  /**
   * An NDArray over `bytes` (little-endian, as numpy sends them): a view when `bytes` is
   * aligned for the dtype, else a copy. Throws a `RangeError` when the sizes do not match.
   */
  static fromBytes(dtype: DType, shape: ReadonlyArray<number>, bytes: Uint8Array): NDArray {
    const Typed = CONSTRUCTORS[dtype]
    const width = Typed.BYTES_PER_ELEMENT
    if (bytes.byteLength % width !== 0) {
      throw new RangeError(`${bytes.byteLength} bytes are not a whole number of ${dtype} values`)
    }
    const length = bytes.byteLength / width
    const data =
      bytes.byteOffset % width === 0
        ? new Typed(bytes.buffer as ArrayBuffer, bytes.byteOffset, length)
        : new Typed(bytes.slice().buffer as ArrayBuffer, 0, length)
    return new NDArray(dtype, data as TypedArrays[DType], shape)
  }

  /** The number of elements. */
  get size(): number {
    return this.data.length
  }

  /** The raw bytes (a view, no copy). */
  get bytes(): Uint8Array {
    return new Uint8Array(this.data.buffer, this.data.byteOffset, this.data.byteLength)
  }
}

/**
 * The Schema of an `NDArray` (any dtype), for `Tool.make` and generated clients.
 *
 * @since 0.3.0
 * @category schemas
 */
export const NDArrayFromSelf: Schema.Schema<NDArray> = Schema.instanceOf(NDArray, {
  identifier: "NDArray",
  description: "a numpy array (dtype, shape, TypedArray data)"
})
