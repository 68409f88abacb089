/**
 * The local transport, host side: framed messages on two socket pairs the worker inherited as
 * fds 3 and 4 (python/snakepit_bridge/channel.py is the other side, docs/protocol.md the
 * catalogue). No listener exists, so no other process can reach the worker and no secret is
 * needed.
 *
 * - The *call* socket carries `call` out and `result` / `error` / `chunk` / `end` / `cancelled`
 *   back. Calls are multiplexed by id.
 * - The *control* socket carries what must get through while tools run: `cancel`, `credit`,
 *   `health`, `describe`, `cleanup`, `stop`, and the worker's own host-tool calls.
 *
 * A call that is cancelled (timeout, interruption, a stream ended early) stays known as
 * *abandoned* until the worker reports it stopped, which is what `settled` waits for.
 */
import type { Socket } from "node:net"
import { Chunk, Deferred, Duration, Effect, Exit, FiberMap, Option, type Scope, Stream } from "effect"
import {
  CallTimeout,
  type TransportError,
  type TransportErrorReason,
  type WorkerCallError,
  type WorkerCrashed,
  type WorkerStartError
} from "../../errors.js"
import type { HostToolsService } from "../../HostTool.js"
import type { ToolDescription } from "../../Snakepit.js"
import type { EncodedArgs, ExecuteOptions, StreamOptions, WorkerHealth } from "../../WorkerFactory.js"
import * as Codec from "../codec.js"
import type { WorkerProcess } from "../process.js"
import { type FailureInfo, type Protocol, type RawToolSpec, toolDescription, toolFailure } from "../protocol.js"
import { encodeFrame, type Frame, FrameError, FrameReader, frameSize } from "./frames.js"

/** The protocol version this host speaks (the worker announces its own in `ready`). */
export const PROTOCOL_VERSION = 2

/** What the local transport needs beyond the process. */
export interface LocalOptions {
  readonly workerId: string
  readonly adapter: string
  readonly maxMessageBytes: number
  readonly startupTimeout: Duration.Duration
  readonly gracefulTimeout: Duration.Duration
  /** How long a write may wait for the worker to read before the worker counts as stuck. */
  readonly stallTimeout: Duration.Duration
  readonly hostTools: HostToolsService | undefined
}

type Lost = Effect.Effect<never, WorkerCrashed | TransportError>

/** A call in flight on the call socket. */
interface Pending {
  readonly tool: string
  /** Gets every frame of this call until it is answered or abandoned. */
  onFrame: (frame: Frame) => void
  readonly onLost: (lost: Lost) => void
  abandoned: boolean
}

const str = (value: unknown): string => (typeof value === "string" ? value : "")

const failureOf = (value: unknown): FailureInfo => {
  const e = (typeof value === "object" && value !== null ? value : {}) as Record<string, unknown>
  return {
    kind: str(e.kind),
    type: str(e.type),
    message: str(e.message),
    traceback: str(e.traceback),
    available: Array.isArray(e.available) ? e.available.map(String) : [],
    path: str(e.path)
  }
}

const timeoutMs = (timeout: Duration.DurationInput) => Math.max(0, Math.round(Duration.toMillis(timeout)))

/**
 * Waits for the worker's `ready` frame and returns the protocol. Closing the scope asks the
 * worker to stop (the process half then makes sure it does).
 */
export const make = (
  proc: WorkerProcess,
  options: LocalOptions
): Effect.Effect<Protocol, WorkerStartError, Scope.Scope> =>
  Effect.gen(function* () {
    const [callSocket, controlSocket] = proc.channels as [Socket, Socket]
    const id = options.workerId
    const maxFrame = options.maxMessageBytes
    const calls = new Map<number, Pending>()
    const controls = new Map<number, (frame: Frame) => void>()
    let nextId = 1
    let abandoned = 0
    let settleWaiters: Array<() => void> = []
    /** Set once the channel is unusable: every later call fails with it. */
    let broken: { reason: TransportErrorReason; detail: string; wait: Duration.DurationInput } | undefined
    let onReady: ((frame: Frame) => void) | undefined
    let earlyReady: Frame | undefined
    const failed = yield* Deferred.make<string>()
    const hostFibers = yield* FiberMap.make<number>()
    const runHostTool = yield* FiberMap.runtime(hostFibers)<never>()

    const settle = () => {
      if (abandoned > 0) return
      const waiters = settleWaiters
      settleWaiters = []
      for (const wake of waiters) wake()
    }

    /** The channel failed: fail everything in flight, and stop a worker that broke the protocol. */
    const breakChannel = (reason: TransportErrorReason, detail: string, wait: Duration.DurationInput) => {
      if (broken !== undefined) return
      broken = { reason, detail, wait }
      // A lost connection is a process going away: its exit says how (a crash). A worker that
      // broke the protocol or stopped reading is killed below; it must not be handed out meanwhile.
      if (reason !== "connection_lost") Deferred.unsafeDone(failed, Exit.succeed(`${reason}: ${detail}`))
      for (const [, pending] of calls) pending.onLost(proc.lost(pending.tool, reason, detail, wait))
      calls.clear()
      controls.clear()
      abandoned = 0
      settle()
      callSocket.destroy()
      controlSocket.destroy()
      if (reason !== "connection_lost") Effect.runFork(proc.kill)
    }
    const lostNow = (tool: string | null): Lost =>
      proc.lost(tool, broken?.reason ?? "connection_lost", broken?.detail ?? "the channel is closed", broken?.wait ?? 0)

    // Writes: a worker that stops reading leaves our writes queued; past the stall timeout it
    // counts as stuck, and is replaced rather than waited for.
    const stallMs = timeoutMs(options.stallTimeout)
    const watchStall = (socket: Socket) => {
      let timer: NodeJS.Timeout | undefined
      socket.on("drain", () => {
        clearTimeout(timer)
        timer = undefined
      })
      return () => {
        if (timer !== undefined || socket.writableLength === 0) return
        timer = setTimeout(() => {
          breakChannel("not_reading", `the worker read nothing of its channel for ${stallMs} ms`, 0)
        }, stallMs)
      }
    }
    const stalledCall = watchStall(callSocket)
    const stalledControl = watchStall(controlSocket)
    const write = (socket: Socket, parts: ReadonlyArray<Uint8Array>, stalled: () => void): boolean => {
      if (broken !== undefined || socket.destroyed) return false
      let flushed = true
      if (parts.length === 1) flushed = socket.write(parts[0]!)
      else {
        socket.cork()
        for (const part of parts) flushed = socket.write(part)
        socket.uncork()
      }
      if (!flushed) stalled()
      return true
    }
    const sendControl = (header: string, value?: Codec.Encoded) =>
      write(
        controlSocket,
        encodeFrame(
          value === undefined ? header : `${header.slice(0, -1)},"v":${value.json}}`,
          value?.blobs ?? [],
          value?.tagged ?? false
        ),
        stalledControl
      )

    /** Cancels a call the caller no longer waits for; it is settled when the worker says it stopped. */
    const abandon = (callId: number, pending: Pending) => {
      if (pending.abandoned || calls.get(callId) !== pending) return
      pending.abandoned = true
      abandoned++
      pending.onFrame = (frame) => {
        const t = frame.header.t
        if (t === "chunk") return
        calls.delete(callId)
        abandoned--
        settle()
      }
      sendControl(`{"t":"cancel","i":${callId}}`)
    }

    const decodeValue = (frame: Frame): unknown => {
      const value = frame.header.v
      return frame.tagged ? Codec.decodeTagged(value, frame.blobs) : value
    }

    // ---- reading --------------------------------------------------------------------------

    const onCallFrame = (frame: Frame) => {
      const pending = calls.get(frame.header.i as number)
      if (pending === undefined) {
        throw new FrameError(
          "protocol_error",
          `a ${String(frame.header.t)} frame for unknown call ${String(frame.header.i)}`
        )
      }
      pending.onFrame(frame)
    }

    const onControlFrame = (frame: Frame) => {
      switch (frame.header.t) {
        case "reply": {
          const resolve = controls.get(frame.header.i as number)
          if (resolve !== undefined) {
            controls.delete(frame.header.i as number)
            resolve(frame)
          }
          return
        }
        case "ready":
          if (onReady !== undefined) onReady(frame)
          else earlyReady = frame
          return
        case "host_call":
        case "host_list":
          serveHostTool(frame)
          return
        case "host_cancel":
          Effect.runFork(FiberMap.remove(hostFibers, frame.header.i as number))
          return
        default:
          throw new FrameError("protocol_error", `unknown frame type ${JSON.stringify(frame.header.t)}`)
      }
    }

    const serveHostTool = (frame: Frame) => {
      const callId = frame.header.i as number
      const tools = options.hostTools
      const reply = (outcome: Effect.Effect<void>) => runHostTool(callId, outcome)
      if (frame.header.t === "host_list") {
        const value = Codec.encode(tools?.tools ?? [], "tools") as Codec.Encoded
        reply(Effect.sync(() => sendControl(`{"t":"host_result","i":${callId}}`, value)))
        return
      }
      if (tools === undefined) {
        const e = JSON.stringify({
          kind: "python_exception",
          type: "HostToolsUnavailable",
          message: "this pool has no host tools (provide HostTools.layer(...))"
        })
        sendControl(`{"t":"host_result","i":${callId},"e":${e}}`)
        return
      }
      let args: unknown
      try {
        args = frame.tagged ? Codec.decodeTagged(frame.header.a, frame.blobs) : frame.header.a
      } catch (error) {
        throw new FrameError("protocol_error", `a host_call frame holds a malformed value: ${String(error)}`)
      }
      reply(
        Effect.flatMap(
          tools.call({ tool: str(frame.header.tool), args: args ?? {}, session: str(frame.header.s), workerId: id }),
          (outcome) =>
            Effect.sync(() => {
              if (outcome._tag === "Success") sendControl(`{"t":"host_result","i":${callId}}`, outcome.value)
              else sendControl(`{"t":"host_result","i":${callId},"e":${JSON.stringify(outcome.failure)}}`)
            })
        )
      )
    }

    const listen = (socket: Socket, onFrame: (frame: Frame) => void) => {
      const reader = new FrameReader(maxFrame)
      socket.on("data", (chunk: Buffer) => {
        if (broken !== undefined) return
        try {
          for (const frame of reader.push(chunk)) onFrame(frame)
        } catch (error) {
          if (error instanceof FrameError) breakChannel(error.reason, error.message, 0)
          else if (error instanceof Codec.MalformedValue) breakChannel("protocol_error", error.message, 0)
          else throw error
        }
      })
      socket.on("close", () =>
        breakChannel(
          "connection_lost",
          reader.partial ? "the channel closed in the middle of a message" : "the channel closed",
          Duration.seconds(2)
        )
      )
      socket.on("error", () => {})
    }
    listen(callSocket, onCallFrame)
    listen(controlSocket, onControlFrame)

    // ---- readiness --------------------------------------------------------------------------

    const ready = Effect.async<Frame>((resume) => {
      if (earlyReady !== undefined) resume(Effect.succeed(earlyReady))
      else onReady = (frame) => resume(Effect.succeed(frame))
    })
    const readyFrame = yield* Effect.raceFirst(
      ready,
      Effect.flatMap(proc.exited, (status) => proc.exitedBeforeReady(status, options.adapter))
    ).pipe(
      Effect.timeoutFail({
        duration: options.startupTimeout,
        onTimeout: () =>
          proc.startError("startup_timeout", `not ready within ${Duration.format(options.startupTimeout)}`)
      })
    )
    onReady = undefined
    if (readyFrame.header.protocol !== PROTOCOL_VERSION) {
      return yield* proc.startError(
        "bad_readiness_line",
        `the worker speaks protocol ${String(readyFrame.header.protocol)}, this host ${PROTOCOL_VERSION}: ` +
          "the snakepit_bridge package on its PYTHONPATH does not match @snakepit/core"
      )
    }

    // ---- control requests ----------------------------------------------------------------------

    /** A control request and its reply's value. */
    const request = (header: (callId: number) => string) =>
      Effect.async<unknown, WorkerCrashed | TransportError>((resume) => {
        if (broken !== undefined) {
          resume(lostNow(null))
          return
        }
        const callId = nextId++
        controls.set(callId, (frame) => resume(Effect.succeed(frame.header.v)))
        sendControl(header(callId))
        return Effect.sync(() => controls.delete(callId))
      })

    // Runs before the process half's finalizer (registered earlier): a polite stop first.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        if (broken !== undefined || !(yield* proc.isRunning)) return
        yield* proc.stopRequested
        yield* request((callId) => `{"t":"stop","i":${callId},"grace_ms":${timeoutMs(options.gracefulTimeout)}}`).pipe(
          Effect.interruptible,
          Effect.timeout(options.gracefulTimeout),
          Effect.either
        )
      })
    )

    // ---- calls ---------------------------------------------------------------------------------

    const callHeader = (
      callId: number,
      tool: string,
      args: EncodedArgs,
      opts: ExecuteOptions | StreamOptions,
      extra: string
    ) => {
      let header = `{"t":"call","i":${callId},"tool":${JSON.stringify(tool)},"a":${args.json}`
      if (opts.session !== undefined) header += `,"s":${JSON.stringify(opts.session)}`
      if (opts.sessionMoved === true) header += `,"sm":true`
      return `${header}${extra}}`
    }

    /** The call's frame, or the InvalidArguments-free failure when it is too large to send. */
    const callFrame = (
      header: string,
      args: EncodedArgs,
      attachments: Readonly<Record<string, Uint8Array>> | undefined
    ) => {
      let blobs = args.blobs
      let tagged = args.tagged
      let text = header
      if (attachments !== undefined && Object.keys(attachments).length > 0) {
        const encoded = Codec.encode(attachments, "attachments")
        if (Codec.isProblem(encoded)) return encoded
        // The attachments' blobs follow the arguments' ones: renumber their tags.
        const offset = blobs.length
        const json =
          offset === 0 ? encoded.json : encoded.json.replace(/"blob":(\d+)/g, (_, n) => `"blob":${Number(n) + offset}`)
        text = `${header.slice(0, -1)},"att":${json}}`
        blobs = [...blobs, ...encoded.blobs]
        tagged = true
      }
      return encodeFrame(text, blobs, tagged)
    }

    const tooLarge = (tool: string, size: number) =>
      proc.lost(
        tool,
        "message_too_large",
        `the call is ${size} bytes, over the limit of ${maxFrame} bytes (maxMessageBytes)`,
        0
      )

    const executeEncoded = (tool: string, args: EncodedArgs, opts: ExecuteOptions = {}) =>
      Effect.async<unknown, WorkerCallError>((resume) => {
        if (broken !== undefined) {
          resume(lostNow(tool))
          return
        }
        const callId = nextId++
        const frame = callFrame(callHeader(callId, tool, args, opts, ""), args, opts.attachments)
        if (!Array.isArray(frame)) {
          resume(
            Effect.fail(
              toolFailure(id, tool, {
                kind: "invalid_arguments",
                type: "",
                message: frame.reason,
                traceback: "",
                available: [],
                path: frame.path
              })
            )
          )
          return
        }
        const size = frameSize(frame)
        if (size > maxFrame + 4) {
          resume(tooLarge(tool, size))
          return
        }
        let timer: NodeJS.Timeout | undefined
        const pending: Pending = {
          tool,
          abandoned: false,
          onFrame: (answer) => {
            const t = answer.header.t
            if (t !== "result" && t !== "error") {
              throw new FrameError("protocol_error", `a ${String(t)} frame answered the call of "${tool}"`)
            }
            // Decoded before the call is forgotten: a malformed value breaks the channel, which fails it.
            const outcome: Effect.Effect<unknown, WorkerCallError> =
              t === "result"
                ? Effect.succeed(decodeValue(answer))
                : Effect.fail(toolFailure(id, tool, failureOf(answer.header.e)))
            calls.delete(callId)
            clearTimeout(timer)
            resume(outcome)
          },
          onLost: (lost) => {
            clearTimeout(timer)
            resume(lost)
          }
        }
        calls.set(callId, pending)
        write(callSocket, frame, stalledCall)
        if (opts.timeout !== undefined) {
          // One native timer per call (docs/adr/0004); Python sees a cancellation.
          const ms = timeoutMs(opts.timeout)
          timer = setTimeout(() => {
            abandon(callId, pending)
            resume(Effect.fail(new CallTimeout({ tool, timeoutMs: ms, workerId: id })))
          }, ms)
        }
        return Effect.sync(() => {
          clearTimeout(timer)
          abandon(callId, pending)
        })
      })

    const executeStream = (tool: string, args: EncodedArgs, opts: StreamOptions = {}) =>
      Stream.suspend(() => {
        const window = Math.max(1, opts.window ?? 16)
        const grantEvery = Math.max(1, Math.floor(window / 2))
        const idleMs = opts.idleTimeout === undefined ? undefined : timeoutMs(opts.idleTimeout)
        const buffered: Array<unknown> = []
        let ended = false
        let failure: Effect.Effect<never, WorkerCallError> | undefined
        let wake: (() => void) | undefined
        let ungranted = 0
        let callId = 0
        let pending: Pending | undefined

        const start = Effect.sync(() => {
          if (broken !== undefined) {
            failure = lostNow(tool)
            return
          }
          callId = nextId++
          const frame = callFrame(
            callHeader(callId, tool, args, opts, `,"stream":true,"w":${window}`),
            args,
            opts.attachments
          )
          if (!Array.isArray(frame)) {
            failure = Effect.fail(
              toolFailure(id, tool, {
                kind: "invalid_arguments",
                type: "",
                message: frame.reason,
                traceback: "",
                available: [],
                path: frame.path
              })
            )
            return
          }
          const size = frameSize(frame)
          if (size > maxFrame + 4) {
            failure = tooLarge(tool, size)
            return
          }
          pending = {
            tool,
            abandoned: false,
            onFrame: (answer) => {
              switch (answer.header.t) {
                case "chunk":
                case "result":
                  buffered.push(decodeValue(answer))
                  if (answer.header.t === "result") {
                    calls.delete(callId)
                    ended = true
                  }
                  break
                case "end":
                  calls.delete(callId)
                  ended = true
                  break
                case "error":
                  calls.delete(callId)
                  failure = Effect.fail(toolFailure(id, tool, failureOf(answer.header.e)))
                  break
                default:
                  throw new FrameError(
                    "protocol_error",
                    `a ${String(answer.header.t)} frame in the stream of "${tool}"`
                  )
              }
              wake?.()
            },
            onLost: (lost) => {
              failure = lost
              wake?.()
            }
          }
          calls.set(callId, pending)
          write(callSocket, frame, stalledCall)
        })

        // Ending early (or failing) cancels the generator; its `finally` runs in Python.
        const finish = Effect.sync(() => {
          wake = undefined
          if (pending !== undefined && !ended && failure === undefined) abandon(callId, pending)
        })

        const pull = Effect.async<Chunk.Chunk<unknown>, Option.Option<WorkerCallError>>((resume) => {
          let timer: NodeJS.Timeout | undefined
          const deliver = () => {
            if (buffered.length > 0) {
              const items = buffered.splice(0)
              ungranted += items.length
              if (!ended && ungranted >= grantEvery) {
                sendControl(`{"t":"credit","i":${callId},"n":${ungranted}}`)
                ungranted = 0
              }
              resume(Effect.succeed(Chunk.unsafeFromArray(items)))
            } else if (failure !== undefined) resume(Effect.mapError(failure, Option.some))
            else if (ended) resume(Effect.fail(Option.none()))
            else return false
            clearTimeout(timer)
            wake = undefined
            return true
          }
          if (deliver()) return
          wake = () => void deliver()
          if (idleMs !== undefined) {
            timer = setTimeout(() => {
              wake = undefined
              if (pending !== undefined) abandon(callId, pending)
              failure = Effect.fail(new CallTimeout({ tool, timeoutMs: idleMs, workerId: id }))
              resume(Effect.mapError(failure, Option.some))
            }, idleMs)
          }
          return Effect.sync(() => {
            clearTimeout(timer)
            wake = undefined
          })
        })

        return Stream.acquireRelease(start, () => finish).pipe(
          Stream.flatMap(() => Stream.repeatEffectChunkOption(pull))
        )
      })

    const health = (timeout: Duration.DurationInput = Duration.seconds(5)) =>
      request((callId) => `{"t":"health","i":${callId}}`).pipe(
        Effect.map((value): WorkerHealth => {
          const h = (value ?? {}) as Record<string, unknown>
          return {
            ok: h.ok === true,
            detail: str(h.detail),
            pid: Number(h.pid ?? proc.pid),
            rssBytes: Number(h.rss_bytes ?? 0),
            activeCalls: Number(h.active_calls ?? 0),
            uptimeMs: Number(h.uptime_ms ?? 0),
            running: (Array.isArray(h.running) ? h.running : []).map((r: Record<string, unknown>) => ({
              tool: str(r.tool),
              ms: Number(r.ms ?? 0),
              cancelledMs: typeof r.cancelled_ms === "number" ? r.cancelled_ms : undefined
            }))
          }
        }),
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () => new CallTimeout({ tool: "health", timeoutMs: timeoutMs(timeout), workerId: id })
        })
      )

    const describeTools = request((callId) => `{"t":"describe","i":${callId}}`).pipe(
      Effect.map((value): ReadonlyArray<ToolDescription> => {
        const tools = ((value ?? {}) as { tools?: ReadonlyArray<Record<string, unknown>> }).tools ?? []
        return tools.map((t) =>
          toolDescription({
            name: str(t.name),
            description: str(t.description),
            streaming: t.streaming === true,
            parameters: ((t.parameters ?? []) as ReadonlyArray<Record<string, unknown>>).map((p) => ({
              name: str(p.name),
              type: str(p.type),
              required: p.required === true,
              defaultJson: str(p.default_json)
            })),
            types: t.types
          } satisfies RawToolSpec)
        )
      })
    )

    return {
      address: "local",
      executeEncoded,
      executeStream,
      health,
      describeTools,
      cleanupSession: (session) =>
        request((callId) => `{"t":"cleanup","i":${callId},"s":${JSON.stringify(session)}}`).pipe(
          Effect.map((value) => (value as { existed?: unknown } | undefined)?.existed === true)
        ),
      failed: Deferred.await(failed),
      settled: Effect.async<void>((resume) => {
        if (abandoned === 0) {
          resume(Effect.void)
          return
        }
        const wakeUp = () => resume(Effect.void)
        settleWaiters.push(wakeUp)
        return Effect.sync(() => {
          settleWaiters = settleWaiters.filter((w) => w !== wakeUp)
        })
      })
    } satisfies Protocol
  })
