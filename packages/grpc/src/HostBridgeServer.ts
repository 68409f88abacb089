/**
 * The host side of "host tools": a gRPC server, private to one run, through which Python
 * workers call tools registered in TypeScript. Every call must carry the run's secret.
 *
 * @since 0.1.0
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto"
import { chmodSync } from "node:fs"
import {
  type Metadata,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  status as Status,
  type sendUnaryData
} from "@grpc/grpc-js"
import { Cause, Duration, Effect, Exit, Fiber, FiberId, Runtime, Schema, type Scope } from "effect"
import { DEFAULT_MAX_MESSAGE_BYTES } from "./BridgeClient.js"
import {
  type CallHostToolRequest,
  type CallHostToolResponse,
  type HostToolServiceServer,
  HostToolServiceService,
  type ListHostToolsRequest,
  type ListHostToolsResponse,
  type ToolSpec
} from "./generated/snakepit_bridge.js"

/** The metadata key under which a worker sends the secret. */
export const SECRET_METADATA_KEY = "x-snakepit-secret"

/** Default for how long closing the scope waits for in-flight calls before cancelling them. */
export const DEFAULT_SHUTDOWN_TIMEOUT: Duration.Duration = Duration.seconds(2)

/**
 * Serves one host tool call. It cannot fail: every tool-level failure is a `ToolError` in the
 * response. A defect becomes gRPC INTERNAL; interruption (the caller cancelled) ends the call.
 */
export type HostCallHandler = (request: CallHostToolRequest) => Effect.Effect<CallHostToolResponse>

/** What `make` needs. */
export interface HostBridgeServerOptions {
  /** Runs each authenticated CallHostTool. */
  readonly handler: HostCallHandler
  /** The tools reported by ListHostTools; read on every call, so it may change over time. */
  readonly listTools: () => ReadonlyArray<ToolSpec>
  /**
   * Listen on this Unix socket instead of an ephemeral loopback TCP port. The file is made
   * mode 0600 right after binding; put it in a directory only the current user can enter to
   * close the short window before the chmod.
   */
  readonly socketPath?: string
  /** The secret callers must present. Default: 32 random bytes, hex-encoded. */
  readonly secret?: string
  /** How long closing the scope waits for in-flight calls before cancelling them. Default 2 seconds. */
  readonly shutdownTimeout?: Duration.DurationInput
  /** Largest message received or sent, in bytes. Default 64 MiB, as for the worker bridge. */
  readonly maxMessageBytes?: number
}

/** A running host bridge. */
export interface HostBridgeServer {
  /** `127.0.0.1:<port>` or `unix:<socketPath>`: what workers connect to. */
  readonly address: string
  /** The secret every call must carry in `x-snakepit-secret`; workers get it on stdin, never in their environment. */
  readonly secret: string
}

/** The host bridge could not listen (address in use, socket path not writable, ...). */
export class HostBridgeStartError extends Schema.TaggedError<HostBridgeStartError>()("HostBridgeStartError", {
  /** The address the server tried to bind, e.g. `127.0.0.1:0` or `unix:/run/x.sock`. */
  address: Schema.String,
  details: Schema.String
}) {
  override get message() {
    return `host bridge could not listen on ${this.address}: ${this.details}`
  }
}

/**
 * Hashing both sides first gives equal-length inputs to `timingSafeEqual`, so neither the
 * content nor the length of the expected secret leaks through timing.
 */
const digest = (value: string | Buffer): Buffer => createHash("sha256").update(value).digest()

const makeAuthorizer = (secret: string) => {
  const expected = digest(secret)
  return (metadata: Metadata): boolean => {
    const values = metadata.get(SECRET_METADATA_KEY)
    // Exactly one value: a second one would make "which one counts" ambiguous.
    if (values.length !== 1) return false
    const presented = values[0]
    if (presented === undefined) return false
    return timingSafeEqual(digest(presented), expected)
  }
}

const unauthenticated = { code: Status.UNAUTHENTICATED, details: `missing or wrong ${SECRET_METADATA_KEY}` }

/** The message of a handler's defect (or, impossible by its type, failure), for the INTERNAL status. */
const causeMessage = (cause: Cause.Cause<unknown>): string => {
  const error = Cause.squash(cause)
  if (error instanceof Error) return error.message || error.name
  return typeof error === "string" ? error : String(error)
}

/** Metadata values of ASCII-only headers must be printable; anything else could not be sent by the worker. */
const isSendableSecret = (secret: string): boolean => /^[\x21-\x7e]+$/.test(secret)

const bind = (server: Server, address: string) =>
  Effect.async<number, HostBridgeStartError>((resume) => {
    server.bindAsync(address, ServerCredentials.createInsecure(), (error, port) => {
      if (error) resume(Effect.fail(new HostBridgeStartError({ address, details: error.message })))
      else resume(Effect.succeed(port))
    })
  })

/**
 * Waits up to `timeout` for in-flight calls to finish, then cancels the rest; a cancelled call
 * interrupts its handler fiber.
 */
const shutdown = (server: Server, timeout: Duration.Duration) =>
  Effect.async<void>((resume) => {
    server.tryShutdown(() => resume(Effect.void))
  }).pipe(
    // Finalizers run uninterruptibly; without this the timeout could not abandon the wait.
    Effect.interruptible,
    Effect.timeout(timeout),
    Effect.catchAll(() => Effect.sync(() => server.forceShutdown()))
  )

/**
 * Starts the host bridge: a grpc-js server on `127.0.0.1:0` (loopback only, never all
 * interfaces) or on `unix:<socketPath>` (mode 0600). Handlers run on the runtime of the
 * calling fiber, so they see its services, logger and tracer. Closing the scope stops the
 * server (graceful up to `shutdownTimeout`, then forced) and interrupts handlers still running.
 */
export const make = (
  options: HostBridgeServerOptions
): Effect.Effect<HostBridgeServer, HostBridgeStartError, Scope.Scope> =>
  Effect.gen(function* () {
    const secret = options.secret ?? randomBytes(32).toString("hex")
    if (!isSendableSecret(secret)) {
      return yield* Effect.dieMessage("HostBridgeServer.make: the secret must be non-empty printable ASCII")
    }
    const authorized = makeAuthorizer(secret)
    const runtime = yield* Effect.runtime<never>()
    const runFork = Runtime.runFork(runtime)
    const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES
    // Tracked so that closing the scope can wait for them: a handler must not outlive the
    // services it was given.
    const running = new Set<Fiber.RuntimeFiber<CallHostToolResponse>>()

    const callHostTool = (
      call: ServerUnaryCall<CallHostToolRequest, CallHostToolResponse>,
      callback: sendUnaryData<CallHostToolResponse>
    ): void => {
      if (!authorized(call.metadata)) {
        callback(unauthenticated)
        return
      }
      if (call.cancelled) return
      // suspend: a handler that throws while building its effect is a defect, not a crash.
      const fiber = runFork(Effect.suspend(() => options.handler(call.request)))
      running.add(fiber)
      const onCancelled = () => fiber.unsafeInterruptAsFork(FiberId.none)
      call.once("cancelled", onCancelled)
      fiber.addObserver((exit) => {
        running.delete(fiber)
        call.off("cancelled", onCancelled)
        if (Exit.isSuccess(exit)) {
          callback(null, exit.value)
        } else if (Cause.isInterruptedOnly(exit.cause)) {
          // Usually the caller cancelled and will not see this; otherwise the host is shutting down.
          callback({ code: Status.CANCELLED, details: "host tool call was interrupted" })
        } else {
          // The worker sees only the message; the host's log keeps the full cause.
          runFork(Effect.logError("host tool handler died", exit.cause))
          callback({ code: Status.INTERNAL, details: causeMessage(exit.cause) })
        }
      })
    }

    const listHostTools = (
      call: ServerUnaryCall<ListHostToolsRequest, ListHostToolsResponse>,
      callback: sendUnaryData<ListHostToolsResponse>
    ): void => {
      if (!authorized(call.metadata)) {
        callback(unauthenticated)
        return
      }
      let tools: ReadonlyArray<ToolSpec>
      try {
        tools = options.listTools()
      } catch (error) {
        callback({ code: Status.INTERNAL, details: error instanceof Error ? error.message : String(error) })
        return
      }
      callback(null, { tools: [...tools] })
    }

    const address = options.socketPath === undefined ? "127.0.0.1:0" : `unix:${options.socketPath}`
    const server = new Server({
      "grpc.max_receive_message_length": maxBytes,
      "grpc.max_send_message_length": maxBytes
    })
    server.addService(HostToolServiceService, { callHostTool, listHostTools } satisfies HostToolServiceServer)

    const shutdownTimeout = Duration.decode(options.shutdownTimeout ?? DEFAULT_SHUTDOWN_TIMEOUT)
    const port = yield* Effect.acquireRelease(
      bind(server, address).pipe(Effect.onError(() => Effect.sync(() => server.forceShutdown()))),
      () =>
        shutdown(server, shutdownTimeout).pipe(
          // Calls the server has cancelled are already being interrupted; this waits for them.
          Effect.zipRight(Effect.suspend(() => Fiber.interruptAll([...running])))
        )
    )

    if (options.socketPath !== undefined) {
      const socketPath = options.socketPath
      yield* Effect.try({
        try: () => chmodSync(socketPath, 0o600),
        catch: (error) =>
          new HostBridgeStartError({ address, details: `chmod 0600 failed: ${(error as Error).message}` })
      })
    }

    const bound = options.socketPath === undefined ? `127.0.0.1:${port}` : address
    return {
      address: bound,
      secret
    } satisfies HostBridgeServer
  })
