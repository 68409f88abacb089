/**
 * The worker's bridge service as an Effect client. Interrupting a call cancels the RPC;
 * the channel is a scoped resource closed with its scope.
 *
 * @since 0.1.0
 */
import {
  type CallOptions,
  type ClientReadableStream,
  type ClientUnaryCall,
  credentials,
  Metadata,
  type ServiceError,
  status as Status
} from "@grpc/grpc-js"
import { Duration, Effect, type Scope, Stream } from "effect"
import { fromServiceError, GrpcConnectTimeout, type GrpcError } from "./GrpcError.js"
import {
  BridgeServiceClient,
  type CleanupSessionResponse,
  type DescribeToolsResponse,
  type ExecuteToolRequest,
  type ExecuteToolResponse,
  type HealthResponse,
  type PingResponse,
  type ToolChunk,
  type WaitSettledResponse
} from "./generated/snakepit_bridge.js"

/** Default cap on a single message in either direction: 64 MiB. */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

/** How to reach a worker's bridge. */
export interface BridgeClientOptions {
  /** `host:port` or `unix:/path`. */
  readonly address: string
  /** Largest message sent or received, in bytes. Default 64 MiB. */
  readonly maxMessageBytes?: number
  /** How long to wait for the channel to become ready. Default 5 seconds. */
  readonly connectTimeout?: Duration.DurationInput
  /** The worker's token, sent with every call as `x-snakepit-token`. */
  readonly token?: string
}

/** The metadata key under which the host sends a worker its token. */
export const TOKEN_METADATA_KEY = "x-snakepit-token"

/** Per-call settings. */
export interface RpcOptions {
  /** A gRPC deadline sent to the peer. Prefer Effect timeouts for host-side limits. */
  readonly deadline?: Duration.DurationInput
  /**
   * Unary calls: cancel the call after this long and fail with `GrpcDeadlineExceeded`, with
   * one native timer and nothing sent to the peer. A wire deadline costs the peer a timer of
   * its own per call, about 0.1 ms of latency on a small machine (see docs/adr/0004).
   */
  readonly timeout?: Duration.DurationInput
  /** Streams: the longest wait for each next message; then `GrpcDeadlineExceeded` and the call is cancelled. */
  readonly idleTimeout?: Duration.DurationInput
  /** Metadata sent with the call. */
  readonly metadata?: Readonly<Record<string, string>>
}

/** A connected client of one worker's BridgeService. */
export interface BridgeClient {
  readonly address: string
  readonly ping: (message?: string, options?: RpcOptions) => Effect.Effect<PingResponse, GrpcError>
  readonly health: (options?: RpcOptions) => Effect.Effect<HealthResponse, GrpcError>
  readonly executeTool: (
    request: ExecuteToolRequest,
    options?: RpcOptions
  ) => Effect.Effect<ExecuteToolResponse, GrpcError>
  /** The tool's chunks, pulled on demand: grpc-js reads the next message only when asked. */
  readonly executeStreamingTool: (
    request: ExecuteToolRequest,
    options?: RpcOptions
  ) => Stream.Stream<ToolChunk, GrpcError>
  readonly describeTools: (options?: RpcOptions) => Effect.Effect<DescribeToolsResponse, GrpcError>
  readonly initializeSession: (sessionId: string, options?: RpcOptions) => Effect.Effect<void, GrpcError>
  readonly cleanupSession: (sessionId: string, options?: RpcOptions) => Effect.Effect<boolean, GrpcError>
  /** Asks the worker to stop serving and exit after `grace`. */
  readonly stop: (grace: Duration.DurationInput, options?: RpcOptions) => Effect.Effect<void, GrpcError>
  /** Completes once the call with `requestId` no longer runs in the worker; false if it still ran at `timeout`. */
  readonly waitSettled: (
    requestId: string,
    timeout: Duration.DurationInput,
    options?: RpcOptions
  ) => Effect.Effect<boolean, GrpcError>
}

type Callback<A> = (error: ServiceError | null, response: A) => void

/**
 * grpc-js throws synchronously when a call cannot even start (a closed channel, invalid
 * metadata); that is a typed failure of the call, not a defect.
 */
const startFailure = (method: string, error: unknown): GrpcError =>
  fromServiceError(method, {
    code: /shut ?down|closed/i.test(String(error)) ? Status.UNAVAILABLE : Status.INTERNAL,
    details: error instanceof Error ? error.message : String(error),
    message: String(error)
  })

/** What an idle stream fails with: mapped like a deadline, since it is one per message. */
const idleTimeoutError = (idleMs: number) => ({
  code: Status.DEADLINE_EXCEEDED,
  details: `no message within the idle timeout of ${idleMs} ms`,
  message: `idle timeout ${idleMs} ms`
})

/** What a unary call fails with when its host-side `timeout` passes. */
const timeoutError = (timeoutMs: number) => ({
  code: Status.DEADLINE_EXCEEDED,
  details: `no answer within the timeout of ${timeoutMs} ms`,
  message: `timeout ${timeoutMs} ms`
})

/**
 * The call's chunks as an AsyncIterable whose `return` cancels the call first (a Readable's own
 * `return` waits for the pending message, which an idle stream may never send), and whose
 * `next` gives up after `idleMs`. One native timer per message: an Effect timeout per chunk
 * cost more than the rest of the stream's work together (see bench/).
 */
const cancelFirst = (call: ClientReadableStream<ToolChunk>, idleMs: number | undefined): AsyncIterable<ToolChunk> => ({
  [Symbol.asyncIterator]: () => {
    const iterator = (call as AsyncIterable<ToolChunk>)[Symbol.asyncIterator]()
    const next = (): Promise<IteratorResult<ToolChunk>> => {
      if (idleMs === undefined) return iterator.next()
      let timer: NodeJS.Timeout | undefined
      const idle = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          call.cancel()
          reject(idleTimeoutError(idleMs))
        }, idleMs)
      })
      return Promise.race([iterator.next(), idle]).finally(() => clearTimeout(timer))
    }
    return {
      next,
      return: (value?: unknown) => {
        call.cancel()
        return iterator.return ? iterator.return(value) : Promise.resolve({ done: true as const, value: undefined })
      }
    }
  }
})

/** Errors from a stream are grpc-js status errors, but anything else must still map to a typed one. */
const streamFailure =
  (method: string) =>
  (error: unknown): GrpcError =>
    typeof (error as ServiceError).code === "number"
      ? fromServiceError(method, error as ServiceError)
      : fromServiceError(method, { code: Status.INTERNAL, details: String(error), message: String(error) })

const callOptions = (options: RpcOptions | undefined): Partial<CallOptions> =>
  options?.deadline === undefined ? {} : { deadline: Date.now() + Duration.toMillis(options.deadline) }

const metadataOf = (token: string | undefined, options: RpcOptions | undefined): Metadata => {
  const metadata = new Metadata()
  if (token !== undefined) metadata.set(TOKEN_METADATA_KEY, token)
  for (const [key, value] of Object.entries(options?.metadata ?? {})) metadata.set(key, value)
  return metadata
}

const unary = <A>(
  token: string | undefined,
  method: string,
  options: RpcOptions | undefined,
  invoke: (metadata: Metadata, callOptions: Partial<CallOptions>, callback: Callback<A>) => ClientUnaryCall
): Effect.Effect<A, GrpcError> =>
  Effect.async<A, GrpcError>((resume) => {
    let call: ClientUnaryCall
    let timer: NodeJS.Timeout | undefined
    let timedOut = false
    try {
      call = invoke(metadataOf(token, options), callOptions(options), (error, response) => {
        // The call cancelled by its timeout still reports CANCELLED here: the timeout has answered.
        if (timedOut) return
        clearTimeout(timer)
        resume(error ? Effect.fail(fromServiceError(method, error)) : Effect.succeed(response))
      })
    } catch (error) {
      resume(Effect.fail(startFailure(method, error)))
      return
    }
    if (options?.timeout !== undefined) {
      const timeoutMs = Duration.toMillis(options.timeout)
      timer = setTimeout(() => {
        timedOut = true
        call.cancel()
        resume(Effect.fail(fromServiceError(method, timeoutError(timeoutMs))))
      }, timeoutMs)
    }
    // Interruption cancels the RPC on the wire, so the worker sees the cancellation.
    return Effect.sync(() => {
      clearTimeout(timer)
      call.cancel()
    })
  })

const waitForReady = (client: BridgeServiceClient, address: string, timeout: Duration.DurationInput) =>
  Effect.async<void, GrpcConnectTimeout>((resume) => {
    const timeoutMs = Duration.toMillis(timeout)
    client.waitForReady(Date.now() + timeoutMs, (error) =>
      resume(error ? Effect.fail(new GrpcConnectTimeout({ address, timeoutMs, details: error.message })) : Effect.void)
    )
  })

/**
 * Opens a channel to `options.address` and waits until it is ready. The channel is closed
 * when the scope closes.
 */
export const make = (options: BridgeClientOptions): Effect.Effect<BridgeClient, GrpcConnectTimeout, Scope.Scope> =>
  Effect.gen(function* () {
    const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES
    const client = yield* Effect.acquireRelease(
      Effect.sync(
        () =>
          new BridgeServiceClient(options.address, credentials.createInsecure(), {
            "grpc.max_receive_message_length": maxBytes,
            "grpc.max_send_message_length": maxBytes,
            // Loopback only: a proxy from the environment must never be used.
            "grpc.enable_http_proxy": 0
          })
      ),
      (client) => Effect.sync(() => client.close())
    )
    yield* waitForReady(client, options.address, options.connectTimeout ?? Duration.seconds(5))

    const executeStreamingTool = (request: ExecuteToolRequest, rpc?: RpcOptions): Stream.Stream<ToolChunk, GrpcError> =>
      Stream.acquireRelease(
        Effect.try({
          try: () => client.executeStreamingTool(request, metadataOf(options.token, rpc), callOptions(rpc)),
          catch: (error) => startFailure("ExecuteStreamingTool", error)
        }),
        // Cancelling an already-finished call is a no-op; an unfinished one is cancelled on the wire.
        (call) => Effect.sync(() => call.cancel())
      ).pipe(
        Stream.flatMap((call) =>
          Stream.fromAsyncIterable(
            cancelFirst(call, rpc?.idleTimeout === undefined ? undefined : Duration.toMillis(rpc.idleTimeout)),
            streamFailure("ExecuteStreamingTool")
          )
        )
      )

    const token = options.token
    return {
      address: options.address,
      ping: (message = "", rpc) => unary(token, "Ping", rpc, (md, co, cb) => client.ping({ message }, md, co, cb)),
      health: (rpc) => unary(token, "Health", rpc, (md, co, cb) => client.health({}, md, co, cb)),
      executeTool: (request, rpc) =>
        unary(token, "ExecuteTool", rpc, (md, co, cb) => client.executeTool(request, md, co, cb)),
      executeStreamingTool,
      describeTools: (rpc) => unary(token, "DescribeTools", rpc, (md, co, cb) => client.describeTools({}, md, co, cb)),
      initializeSession: (sessionId, rpc) =>
        Effect.asVoid(
          unary(token, "InitializeSession", rpc, (md, co, cb) => client.initializeSession({ sessionId }, md, co, cb))
        ),
      cleanupSession: (sessionId, rpc) =>
        Effect.map(
          unary<CleanupSessionResponse>(token, "CleanupSession", rpc, (md, co, cb) =>
            client.cleanupSession({ sessionId }, md, co, cb)
          ),
          (res) => res.existed
        ),
      stop: (grace, rpc) =>
        Effect.asVoid(
          unary(token, "Stop", rpc, (md, co, cb) =>
            client.stop({ graceMs: Math.round(Duration.toMillis(grace)) }, md, co, cb)
          )
        ),
      waitSettled: (requestId, timeout, rpc) =>
        Effect.map(
          unary<WaitSettledResponse>(token, "WaitSettled", rpc, (md, co, cb) =>
            client.waitSettled({ requestId, timeoutMs: Math.round(Duration.toMillis(timeout)) }, md, co, cb)
          ),
          (res) => res.settled
        )
    } satisfies BridgeClient
  })
