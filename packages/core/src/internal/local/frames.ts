/**
 * Frames of the local channel (python/snakepit_bridge/frames.py is the other side):
 *
 * ```
 * u32  length of everything after this field     (big-endian)
 * u8   flags (bit 0: the header holds tagged values)
 * u32  length of the JSON header
 * ...  the JSON header (UTF-8): {"t": type, "i": id, ...}
 * then, until the end of the frame, blobs: u32 length + bytes, each
 * ```
 */
import type { Encoded } from "../codec.js"

const PREFIX = 9
const FLAG_TAGGED = 1

/** A frame as read: its header (parsed JSON), its blobs, and whether the header holds tagged values. */
export interface Frame {
  readonly header: Record<string, unknown>
  readonly blobs: ReadonlyArray<Uint8Array>
  readonly tagged: boolean
}

/** The peer broke the framing; the channel cannot be trusted after this. */
export class FrameError extends Error {
  constructor(
    readonly reason: "protocol_error" | "message_too_large",
    message: string
  ) {
    super(message)
  }
}

/** The bytes of a frame whose JSON header is `header` and whose blobs are `blobs`. */
export const encodeFrame = (header: string, blobs: ReadonlyArray<Uint8Array>, tagged: boolean): Array<Uint8Array> => {
  const headerBytes = Buffer.byteLength(header)
  if (blobs.length === 0) {
    const frame = Buffer.allocUnsafe(PREFIX + headerBytes)
    frame.writeUInt32BE(PREFIX - 4 + headerBytes, 0)
    frame.writeUInt8(tagged ? FLAG_TAGGED : 0, 4)
    frame.writeUInt32BE(headerBytes, 5)
    frame.write(header, PREFIX, "utf8")
    return [frame]
  }
  let length = PREFIX - 4 + headerBytes
  for (const blob of blobs) length += 4 + blob.byteLength
  const head = Buffer.allocUnsafe(PREFIX + headerBytes)
  head.writeUInt32BE(length, 0)
  head.writeUInt8(tagged ? FLAG_TAGGED : 0, 4)
  head.writeUInt32BE(headerBytes, 5)
  head.write(header, PREFIX, "utf8")
  const parts: Array<Uint8Array> = [head]
  for (const blob of blobs) {
    const size = Buffer.allocUnsafe(4)
    size.writeUInt32BE(blob.byteLength, 0)
    parts.push(size, blob)
  }
  return parts
}

/** The total size of a frame, for the limit check before sending. */
export const frameSize = (parts: ReadonlyArray<Uint8Array>): number => {
  let size = 0
  for (const part of parts) size += part.byteLength
  return size
}

/** `header` with a value field whose JSON is already encoded: `{...header, [key]: value}`. */
export const withValue = (header: string, key: string, value: Encoded): string =>
  `${header.slice(0, -1)},"${key}":${value.json}}`

const view = (buffer: Buffer, start: number, end: number): Uint8Array =>
  new Uint8Array(buffer.buffer, buffer.byteOffset + start, end - start)

/**
 * Reassembles frames from the chunks a socket delivers. A frame longer than `maxFrame` is refused
 * as soon as its length is read.
 */
export class FrameReader {
  private chunks: Array<Buffer> = []
  private buffered = 0
  /** A frame larger than the chunks it arrives in, being filled in place. */
  private big: { buffer: Buffer; filled: number } | undefined

  constructor(private readonly maxFrame: number) {}

  /** Adds `chunk` and returns the frames it completes. Throws {@link FrameError}. */
  push(chunk: Buffer): Array<Frame> {
    const frames: Array<Frame> = []
    let data = chunk
    if (this.big !== undefined) {
      const { buffer } = this.big
      const take = Math.min(buffer.length - this.big.filled, data.length)
      data.copy(buffer, this.big.filled, 0, take)
      this.big.filled += take
      if (this.big.filled < buffer.length) return frames
      this.big = undefined
      frames.push(parse(buffer))
      data = data.subarray(take)
    }
    if (this.buffered > 0) {
      this.chunks.push(data)
      data = Buffer.concat(this.chunks, this.buffered + data.length)
      this.chunks = []
      this.buffered = 0
    }
    let offset = 0
    while (data.length - offset >= 4) {
      const length = data.readUInt32BE(offset)
      if (length > this.maxFrame) {
        throw new FrameError(
          "message_too_large",
          `the worker sent a frame of ${length} bytes, over the limit of ${this.maxFrame} bytes (maxMessageBytes)`
        )
      }
      if (length < PREFIX - 4)
        throw new FrameError("protocol_error", `a frame of ${length} bytes is shorter than its prefix`)
      const total = 4 + length
      if (data.length - offset < total) {
        if (total > 1 << 20) {
          // Fill a frame of its own rather than concatenating chunk after chunk.
          const buffer = Buffer.allocUnsafe(total)
          data.copy(buffer, 0, offset)
          this.big = { buffer, filled: data.length - offset }
          return frames
        }
        break
      }
      frames.push(parse(data.subarray(offset, offset + total)))
      offset += total
    }
    if (offset < data.length) {
      this.chunks.push(data.subarray(offset))
      this.buffered = data.length - offset
    }
    return frames
  }

  /** True while part of a frame has arrived: a channel closing now closed mid-frame. */
  get partial(): boolean {
    return this.buffered > 0 || this.big !== undefined
  }
}

const parse = (frame: Buffer): Frame => {
  const flags = frame.readUInt8(4)
  const headerLength = frame.readUInt32BE(5)
  const headerEnd = PREFIX + headerLength
  if (headerEnd > frame.length) throw new FrameError("protocol_error", "a frame header runs past the end of its frame")
  let header: unknown
  try {
    header = JSON.parse(frame.toString("utf8", PREFIX, headerEnd))
  } catch (error) {
    throw new FrameError("protocol_error", `a frame header is not JSON: ${String(error)}`)
  }
  if (typeof header !== "object" || header === null || typeof (header as { t?: unknown }).t !== "string") {
    throw new FrameError("protocol_error", "a frame header is not an object with a type")
  }
  const blobs: Array<Uint8Array> = []
  let offset = headerEnd
  while (offset < frame.length) {
    if (offset + 4 > frame.length)
      throw new FrameError("protocol_error", "a blob length runs past the end of its frame")
    const size = frame.readUInt32BE(offset)
    offset += 4
    if (offset + size > frame.length) throw new FrameError("protocol_error", "a blob runs past the end of its frame")
    blobs.push(view(frame, offset, offset + size))
    offset += size
  }
  return { header: header as Record<string, unknown>, blobs, tagged: (flags & FLAG_TAGGED) !== 0 }
}
