/**
 * The gRPC transport, host side: the worker serves the bridge service on a loopback port (or a
 * 0600 unix socket in a 0700 directory) and refuses every RPC without its token. The token, and
 * where the host's own tool bridge is, reach the worker in one bootstrap line on its stdin, never
 * on its command line or in its environment. Proto messages and status codes end here: what
 * leaves this module is domain types and the typed errors of `errors.ts`.
 */
import { randomBytes } from "node:crypto"
import { BridgeClient, type GrpcError, type Proto } from "@snakepit/grpc"
import { Duration, Effect, FiberSet, type Scope, Stream } from "effect"
import {
  CallTimeout,
  type TransportError,
  type TransportErrorReason,
  type WorkerCallError,
  type WorkerCrashed,
  type WorkerStartError
} from "../../errors.js"
import type { EncodedArgs, ExecuteOptions, StreamOptions, WorkerHealth } from "../../WorkerFactory.js"
import * as Codec from "../codec.js"
import type { WorkerProcess } from "../process.js"
import { type Protocol, toolDescription, toolFailure } from "../protocol.js"

const READY_PREFIX = "SNAKEPIT_READY "

/** What the gRPC transport needs beyond the process. */
export interface GrpcOptions {
  readonly workerId: string
  readonly adapter: string
  readonly maxMessageBytes: number
  readonly startupTimeout: Duration.Duration
  readonly gracefulTimeout: Duration.Duration
  /** Where the host's tool bridge is, when the pool has host tools. */
  readonly hostBridge: { readonly address: string; readonly secret: string } | undefined
}

/** A fresh per-worker token: 32 random bytes. */
export const newToken = (): string => randomBytes(32).toString("base64url")

const KIND_NAMES: Record<number, string> = {
  1: "python_exception",
  2: "tool_not_found",
  3: "invalid_arguments",
  4: "unserializable_result"
}

const failureOf = (error: Proto.ToolError) => ({
  kind: KIND_NAMES[error.kind] ?? "python_exception",
  type: error.type,
  message: error.message,
  traceback: error.traceback,
  available: error.availableTools,
  path: error.path
})

const reasonOf = (error: GrpcError): TransportErrorReason => {
  switch (error._tag) {
    case "GrpcUnavailable":
      return "connection_lost"
    case "GrpcMessageTooLarge":
      return "message_too_large"
    case "GrpcFailure":
      return error.codeName === "UNAUTHENTICATED" ? "unauthenticated" : "rpc_failed"
    case "GrpcDeadlineExceeded":
      return "rpc_failed"
  }
}

const blobsOf = (args: EncodedArgs) => args.blobs.map((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength))

const decodeValue = (json: Uint8Array, blobs: ReadonlyArray<Uint8Array>, tagged: boolean): unknown => {
  const value: unknown = JSON.parse(Buffer.from(json.buffer, json.byteOffset, json.byteLength).toString("utf8"))
  // Plain Uint8Arrays over the message's memory, not Buffers: the same values as the local transport.
  return tagged
    ? Codec.decodeTagged(
        value,
        blobs.map((b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength))
      )
    : value
}

/**
 * Sends the bootstrap line, waits for the readiness line and connects. Closing the scope asks
 * the worker to stop (the process half then makes sure it does).
 */
export const make = (
  proc: WorkerProcess,
  token: string,
  options: GrpcOptions
): Effect.Effect<Protocol, WorkerStartError, Scope.Scope> =>
  Effect.gen(function* () {
    const id = options.workerId
    const bootstrap = JSON.stringify({
      token,
      ...(options.hostBridge === undefined ? {} : { host_bridge: options.hostBridge })
    })
    proc.stdin.write(`${bootstrap}\n`)

    const line = yield* Effect.raceFirst(
      Stream.runHead(proc.stdoutLines).pipe(
        Effect.flatMap((first) =>
          first._tag === "Some"
            ? Effect.succeed(first.value)
            : Effect.flatMap(proc.exited, (s) => proc.exitedBeforeReady(s, options.adapter))
        )
      ),
      Effect.flatMap(proc.exited, (status) => proc.exitedBeforeReady(status, options.adapter))
    ).pipe(
      Effect.timeoutFail({
        duration: options.startupTimeout,
        onTimeout: () =>
          proc.startError("startup_timeout", `not ready within ${Duration.format(options.startupTimeout)}`)
      })
    )
    if (!line.startsWith(READY_PREFIX)) {
      return yield* proc.startError(
        "bad_readiness_line",
        `expected "${READY_PREFIX}{...}" on stdout, got: ${line.slice(0, 200)}`
      )
    }
    const ready = yield* Effect.try({
      try: () => JSON.parse(line.slice(READY_PREFIX.length)) as { port?: number; address?: string },
      catch: () => proc.startError("bad_readiness_line", `readiness line is not JSON: ${line.slice(0, 200)}`)
    })
    const address = ready.address?.startsWith("unix:") ? ready.address : `127.0.0.1:${ready.port}`
    const client = yield* BridgeClient.make({
      address,
      maxMessageBytes: options.maxMessageBytes,
      connectTimeout: options.startupTimeout,
      token
    }).pipe(Effect.mapError((e) => proc.startError("connect_failed", e.message)))

    // Runs before the process half's finalizer: a polite stop first.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        if (!(yield* proc.isRunning)) return
        yield* proc.stopRequested
        yield* client
          .stop(options.gracefulTimeout, { deadline: options.gracefulTimeout })
          .pipe(Effect.interruptible, Effect.timeout(options.gracefulTimeout), Effect.either)
      })
    )

    /** A transport failure: a crash when the process is gone (or going), else a TransportError. */
    const transportFailure =
      (tool: string | null) =>
      (error: GrpcError): Effect.Effect<never, WorkerCrashed | TransportError> =>
        proc.lost(
          tool,
          reasonOf(error),
          error.details,
          error._tag === "GrpcUnavailable" ? Duration.seconds(2) : Duration.millis(50)
        )

    const onTransport = <A>(tool: string | null, effect: Effect.Effect<A, GrpcError>) =>
      effect.pipe(
        Effect.catchTags({
          GrpcUnavailable: transportFailure(tool),
          GrpcDeadlineExceeded: transportFailure(tool),
          GrpcMessageTooLarge: transportFailure(tool),
          GrpcFailure: transportFailure(tool)
        })
      )

    // Calls cancelled by the host: settled once the worker says they no longer run.
    const watchers = yield* FiberSet.make()
    const runWatcher = yield* FiberSet.runtime(watchers)<never>()
    let abandoned = 0
    let settleWaiters: Array<() => void> = []
    const settle = () => {
      abandoned--
      if (abandoned > 0) return
      const waiters = settleWaiters
      settleWaiters = []
      for (const wake of waiters) wake()
    }
    const abandon = (requestId: string) => {
      abandoned++
      runWatcher(
        client
          .waitSettled(requestId, Duration.minutes(10))
          .pipe(Effect.repeat({ until: (settled) => settled }), Effect.either, Effect.ensuring(Effect.sync(settle)))
      )
    }
    let nextRequest = 0

    const requestOf = (
      tool: string,
      args: EncodedArgs,
      opts: ExecuteOptions | StreamOptions
    ): Proto.ExecuteToolRequest => ({
      tool,
      argsJson: Buffer.from(args.json),
      attachments:
        opts.attachments === undefined
          ? {}
          : Object.fromEntries(
              Object.entries(opts.attachments).map(([k, v]) => [k, Buffer.from(v.buffer, v.byteOffset, v.byteLength)])
            ),
      sessionId: opts.session ?? "",
      requestId: `r${++nextRequest}`,
      traceparent: opts.traceparent ?? "",
      blobs: blobsOf(args),
      tagged: args.tagged,
      sessionMoved: opts.sessionMoved === true
    })

    const executeEncoded = (tool: string, args: EncodedArgs, opts: ExecuteOptions = {}) => {
      const timeout = opts.timeout
      const request = requestOf(tool, args, opts)
      return client.executeTool(request, timeout === undefined ? undefined : { timeout }).pipe(
        Effect.onInterrupt(() => Effect.sync(() => abandon(request.requestId))),
        Effect.catchTags({
          GrpcDeadlineExceeded: (error) => {
            if (timeout === undefined) return transportFailure(tool)(error)
            abandon(request.requestId)
            return Effect.fail(new CallTimeout({ tool, timeoutMs: Duration.toMillis(timeout), workerId: id }))
          },
          GrpcUnavailable: transportFailure(tool),
          GrpcMessageTooLarge: transportFailure(tool),
          GrpcFailure: transportFailure(tool)
        }),
        Effect.flatMap((response): Effect.Effect<unknown, WorkerCallError> => {
          const outcome = response.outcome
          if (outcome?.$case === "resultJson")
            return Effect.succeed(decodeValue(outcome.value, response.blobs, response.tagged))
          if (outcome?.$case === "error") return Effect.fail(toolFailure(id, tool, failureOf(outcome.value)))
          return Effect.dieMessage(`worker ${id} answered "${tool}" with neither result nor error`)
        })
      )
    }

    const executeStream = (tool: string, args: EncodedArgs, opts: StreamOptions = {}) =>
      Stream.suspend(() => {
        const request = requestOf(tool, args, opts)
        const idle = opts.idleTimeout
        let done = false
        const chunks = client
          .executeStreamingTool(request, idle === undefined ? undefined : { idleTimeout: idle })
          .pipe(
            Stream.catchTags({
              GrpcDeadlineExceeded: (error) =>
                idle === undefined
                  ? Stream.fromEffect(transportFailure(tool)(error))
                  : Stream.fail(new CallTimeout({ tool, timeoutMs: Duration.toMillis(idle), workerId: id })),
              GrpcUnavailable: (error) => Stream.fromEffect(transportFailure(tool)(error)),
              GrpcMessageTooLarge: (error) => Stream.fromEffect(transportFailure(tool)(error)),
              GrpcFailure: (error) => Stream.fromEffect(transportFailure(tool)(error))
            }),
            Stream.mapEffect((chunk): Effect.Effect<unknown, WorkerCallError> => {
              const outcome = chunk.outcome
              if (outcome?.$case === "dataJson")
                return Effect.succeed(decodeValue(outcome.value, chunk.blobs, chunk.tagged))
              if (outcome?.$case === "error") return Effect.fail(toolFailure(id, tool, failureOf(outcome.value)))
              return Effect.dieMessage(`worker ${id} sent an empty chunk for "${tool}"`)
            }),
            Stream.onEnd(
              Effect.sync(() => {
                done = true
              })
            ),
            Stream.ensuring(
              Effect.sync(() => {
                // Ended early, failed or timed out: the worker cancels the generator; learn when it stopped.
                if (!done) abandon(request.requestId)
              })
            )
          )
        // grpc-js reads 16 messages ahead itself; a window asks for more on top.
        return opts.window === undefined ? chunks : Stream.buffer(chunks, { capacity: opts.window })
      })

    return {
      address,
      executeEncoded,
      executeStream,
      health: (timeout = Duration.seconds(5)) =>
        onTransport(null, client.health()).pipe(
          Effect.map(
            (h): WorkerHealth => ({
              ok: h.ok,
              detail: h.detail,
              pid: h.pid,
              rssBytes: h.rssBytes,
              activeCalls: h.activeCalls,
              uptimeMs: h.uptimeMs,
              running: h.running.map((r) => ({
                tool: r.tool,
                ms: r.ms,
                cancelledMs: r.cancelledMs > 0 ? r.cancelledMs : undefined
              }))
            })
          ),
          Effect.timeoutFail({
            duration: timeout,
            onTimeout: () => new CallTimeout({ tool: "health", timeoutMs: Duration.toMillis(timeout), workerId: id })
          })
        ),
      describeTools: onTransport(null, client.describeTools()).pipe(
        Effect.map((res) =>
          res.tools.map((spec) =>
            toolDescription({
              name: spec.name,
              description: spec.description,
              streaming: spec.streaming,
              parameters: spec.parameters.map((p) => ({
                name: p.name,
                type: p.type,
                required: p.required,
                defaultJson: p.defaultJson.toString("utf8")
              })),
              types: spec.typesJson
            })
          )
        )
      ),
      cleanupSession: (session) => onTransport(null, client.cleanupSession(session)),
      // A broken gRPC connection is a dead process: `exited` says it.
      failed: Effect.never,
      settled: Effect.async<void>((resume) => {
        if (abandoned === 0) {
          resume(Effect.void)
          return
        }
        const wake = () => resume(Effect.void)
        settleWaiters.push(wake)
        return Effect.sync(() => {
          settleWaiters = settleWaiters.filter((w) => w !== wake)
        })
      })
    } satisfies Protocol
  })
