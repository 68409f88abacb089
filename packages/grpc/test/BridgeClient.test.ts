import { createServer } from "node:net"
import { describe, expect, it } from "@effect/vitest"
import {
  Metadata,
  Server,
  ServerCredentials,
  type ServerErrorResponse,
  type ServerWritableStream,
  status
} from "@grpc/grpc-js"
import { Cause, Chunk, Duration, Effect, Either, Exit, Fiber, Scope, Stream } from "effect"
import {
  BridgeClient,
  fromServiceError,
  GrpcDeadlineExceeded,
  type GrpcError,
  GrpcFailure,
  GrpcMessageTooLarge,
  GrpcUnavailable,
  Proto
} from "../src/index.js"

type Handlers = Partial<Proto.BridgeServiceServer>

/** An in-process BridgeService on a loopback port, shut down when the scope closes. */
const serve = (handlers: Handlers) =>
  Effect.acquireRelease(
    Effect.async<{ readonly server: Server; readonly address: string }, Error>((resume) => {
      const server = new Server()
      server.addService(Proto.BridgeServiceService, handlers as Proto.BridgeServiceServer)
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, port) => {
        if (error) {
          server.forceShutdown()
          resume(Effect.fail(error))
        } else {
          resume(Effect.succeed({ server, address: `127.0.0.1:${port}` }))
        }
      })
    }),
    ({ server }) => Effect.sync(() => server.forceShutdown())
  )

/** A server with `handlers` and a client connected to it, both scoped. */
const connect = (handlers: Handlers, options: Omit<BridgeClient.BridgeClientOptions, "address"> = {}) =>
  Effect.gen(function* () {
    const { address } = yield* serve(handlers)
    return yield* BridgeClient.make({ address, ...options })
  })

/** A one-shot signal raised from a grpc-js callback and awaited, with a bound, from an Effect. */
const signal = <A = void>(label: string) => {
  let resolve!: (value: A) => void
  const promise = new Promise<A>((r) => {
    resolve = r
  })
  let raised = false
  return {
    raise: (value: A) => {
      raised = true
      resolve(value)
    },
    get raised() {
      return raised
    },
    await: (timeout: Duration.DurationInput = "5 seconds") =>
      Effect.promise(() => promise).pipe(
        Effect.timeoutFail({ duration: timeout, onTimeout: () => new Error(`timed out waiting for: ${label}`) })
      )
  }
}

/** A port on 127.0.0.1 where nothing listens (bound, then released). */
const freePort = Effect.async<number>((resume) => {
  const probe = createServer()
  probe.listen(0, "127.0.0.1", () => {
    const address = probe.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    probe.close(() => resume(Effect.succeed(port)))
  })
})

const request = (overrides: Partial<Proto.ExecuteToolRequest> = {}): Proto.ExecuteToolRequest => ({
  tool: "echo",
  argsJson: Buffer.from("{}"),
  attachments: {},
  sessionId: "",
  requestId: "",
  traceparent: "",
  blobs: [],
  tagged: false,
  sessionMoved: false,
  ...overrides
})

const json = (value: unknown) => Buffer.from(JSON.stringify(value))

const chunkOf = (i: number): Proto.ToolChunk => ({
  outcome: { $case: "dataJson", value: json(i) },
  attachments: {},
  blobs: [],
  tagged: false
})

/** A result response with no attachments or blobs. */
const resultOf = (value: Buffer): Proto.ExecuteToolResponse => ({
  outcome: { $case: "resultJson", value },
  attachments: {},
  blobs: [],
  tagged: false
})

const dataOf = (chunk: Proto.ToolChunk): unknown =>
  chunk.outcome?.$case === "dataJson" ? JSON.parse(chunk.outcome.value.toString("utf8")) : chunk.outcome

const serviceError = (code: status, details: string): ServerErrorResponse =>
  Object.assign(new Error(details), { code, details, metadata: new Metadata() })

/** Fails the test with a readable message unless `error` has the expected tag. */
const expectTag = <T extends GrpcError["_tag"]>(error: GrpcError, tag: T): Extract<GrpcError, { _tag: T }> => {
  expect(error._tag, `${error._tag}: ${error.message}`).toBe(tag)
  return error as Extract<GrpcError, { _tag: T }>
}

describe("BridgeClient", () => {
  describe("unary calls round-trip their fields", () => {
    it.scopedLive("ping, health, describeTools", () =>
      Effect.gen(function* () {
        const health: Proto.HealthResponse = {
          ok: false,
          pid: 4242,
          rssBytes: 123_456_789,
          activeCalls: 3,
          uptimeMs: 9_876,
          detail: "all 1 tool threads are busy",
          running: [
            { tool: "sleep", ms: 1200, cancelledMs: 700 },
            { tool: "add", ms: 3, cancelledMs: 0 }
          ]
        }
        const seenMetadata: Array<string | undefined> = []
        const client = yield* connect({
          ping: (call, callback) => {
            seenMetadata.push(call.metadata.get("x-request-id")[0]?.toString())
            callback(null, {
              message: `pong:${call.request.message}`,
              pid: 4242,
              workerId: "w-1",
              pythonVersion: "3.12.1",
              adapter: "demo"
            })
          },
          health: (_call, callback) => callback(null, health),
          describeTools: (_call, callback) =>
            callback(null, {
              adapter: "demo",
              tools: [
                {
                  name: "add",
                  description: "adds",
                  streaming: false,
                  typesJson: "",
                  parameters: [{ name: "a", type: "int", required: true, defaultJson: Buffer.alloc(0) }]
                },
                { name: "count", description: "counts", streaming: true, parameters: [], typesJson: "" }
              ]
            })
        })

        expect(yield* client.ping("hello", { metadata: { "x-request-id": "r-7" } })).toEqual({
          message: "pong:hello",
          pid: 4242,
          workerId: "w-1",
          pythonVersion: "3.12.1",
          adapter: "demo"
        })
        expect((yield* client.ping()).message).toBe("pong:")
        expect(seenMetadata).toEqual(["r-7", undefined])

        expect(yield* client.health()).toEqual(health)

        const described = yield* client.describeTools()
        expect(described.adapter).toBe("demo")
        expect(described.tools.map((t) => [t.name, t.streaming])).toEqual([
          ["add", false],
          ["count", true]
        ])
        expect(described.tools[0]?.parameters).toEqual([
          { name: "a", type: "int", required: true, defaultJson: Buffer.alloc(0) }
        ])
      })
    )

    it.scopedLive("initializeSession, cleanupSession, stop", () =>
      Effect.gen(function* () {
        const sessions = new Set<string>()
        const initialized: Array<string> = []
        const graces: Array<number> = []
        const client = yield* connect({
          initializeSession: (call, callback) => {
            initialized.push(call.request.sessionId)
            sessions.add(call.request.sessionId)
            callback(null, {})
          },
          cleanupSession: (call, callback) => callback(null, { existed: sessions.delete(call.request.sessionId) }),
          stop: (call, callback) => {
            graces.push(call.request.graceMs)
            callback(null, {})
          }
        })

        yield* client.initializeSession("s-1")
        expect(initialized).toEqual(["s-1"])
        expect(yield* client.cleanupSession("s-1")).toBe(true)
        expect(yield* client.cleanupSession("s-1")).toBe(false)
        expect(yield* client.cleanupSession("never")).toBe(false)

        yield* client.stop("1.5 seconds")
        yield* client.stop(Duration.millis(2.6))
        yield* client.stop(Duration.zero)
        expect(graces).toEqual([1500, 3, 0])
      })
    )
  })

  describe("the worker token", () => {
    /** Every handler records the x-snakepit-token values it received, then answers. */
    const recording = (seen: Array<ReadonlyArray<string>>): Handlers => {
      const record = (metadata: Metadata) => seen.push(metadata.get(BridgeClient.TOKEN_METADATA_KEY).map(String))
      return {
        ping: (call, callback) => {
          record(call.metadata)
          callback(null, { message: "pong", pid: 1, workerId: "w", pythonVersion: "3", adapter: "a" })
        },
        executeTool: (call, callback) => {
          record(call.metadata)
          callback(null, resultOf(json(1)))
        },
        executeStreamingTool: (call) => {
          record(call.metadata)
          call.write(chunkOf(0))
          call.end()
        },
        stop: (call, callback) => {
          record(call.metadata)
          callback(null, {})
        },
        waitSettled: (call, callback) => {
          record(call.metadata)
          callback(null, { settled: true })
        }
      }
    }

    it.scopedLive("is sent with every call, unary and streaming", () =>
      Effect.gen(function* () {
        const seen: Array<ReadonlyArray<string>> = []
        const client = yield* connect(recording(seen), { token: "t0k3n" })
        yield* client.ping()
        yield* client.executeTool(request())
        yield* Stream.runDrain(client.executeStreamingTool(request()))
        yield* client.waitSettled("r-1", "1 second")
        // Per-call metadata adds to the token; it does not replace it.
        yield* client.stop("1 second", { metadata: { "x-request-id": "r" } })
        expect(seen).toEqual([["t0k3n"], ["t0k3n"], ["t0k3n"], ["t0k3n"], ["t0k3n"]])
      })
    )

    it.scopedLive("is absent when none is configured", () =>
      Effect.gen(function* () {
        const seen: Array<ReadonlyArray<string>> = []
        const client = yield* connect(recording(seen))
        yield* client.ping()
        yield* Stream.runDrain(client.executeStreamingTool(request()))
        expect(seen).toEqual([[], []])
      })
    )

    it.scopedLive("a server that refuses it gives a GrpcFailure with code UNAUTHENTICATED", () =>
      Effect.gen(function* () {
        const client = yield* connect(
          {
            ping: (call, callback) =>
              call.metadata.get(BridgeClient.TOKEN_METADATA_KEY)[0] === "right"
                ? callback(null, { message: "pong", pid: 1, workerId: "w", pythonVersion: "3", adapter: "a" })
                : callback(serviceError(status.UNAUTHENTICATED, "missing or wrong worker token"))
          },
          { token: "wrong" }
        )
        const error = expectTag(yield* Effect.flip(client.ping()), "GrpcFailure")
        expect(error.code).toBe(status.UNAUTHENTICATED)
        expect(error.message).toContain("missing or wrong worker token")
      })
    )
  })

  it.scopedLive("waitSettled sends the request id and the timeout in milliseconds, and returns settled", () =>
    Effect.gen(function* () {
      const received: Array<Proto.WaitSettledRequest> = []
      const client = yield* connect({
        waitSettled: (call, callback) => {
          received.push(call.request)
          callback(null, { settled: call.request.requestId === "done" })
        }
      })
      expect(yield* client.waitSettled("done", "2 seconds")).toBe(true)
      expect(yield* client.waitSettled("running", Duration.millis(250.4))).toBe(false)
      expect(received).toEqual([
        { requestId: "done", timeoutMs: 2000 },
        { requestId: "running", timeoutMs: 250 }
      ])
    })
  )

  it.scopedLive("executeTool sends tool, args, attachments and session, and returns both outcomes", () =>
    Effect.gen(function* () {
      const received: Array<Proto.ExecuteToolRequest> = []
      const client = yield* connect({
        executeTool: (call, callback) => {
          received.push(call.request)
          if (call.request.tool === "missing") {
            callback(null, {
              outcome: {
                $case: "error",
                value: {
                  kind: Proto.ToolError_Kind.TOOL_NOT_FOUND,
                  type: "",
                  message: "no tool named missing",
                  traceback: "",
                  availableTools: ["echo", "add"],
                  path: ""
                }
              },
              attachments: {},
              blobs: [],
              tagged: false
            })
          } else {
            callback(null, {
              outcome: { $case: "resultJson", value: call.request.argsJson },
              attachments: { out: Buffer.concat([call.request.attachments.blob ?? Buffer.alloc(0), Buffer.from([9])]) },
              // Binary values travel raw: the request's blobs come back reversed, in order.
              blobs: call.request.blobs.map((b) => Buffer.from(b).reverse()),
              tagged: call.request.tagged
            })
          }
        }
      })

      const blob = Buffer.from([0, 1, 2, 255])
      const argsJson = json({ x: [1, "two"], b: { __snakepit__: "bytes", blob: 0 } })
      const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
      const ok = yield* client.executeTool(
        request({
          tool: "echo",
          argsJson,
          attachments: { blob },
          sessionId: "s-9",
          requestId: "q-1",
          traceparent,
          blobs: [Buffer.from([1, 2, 3])],
          tagged: true
        })
      )
      expect(received[0]).toEqual({
        tool: "echo",
        argsJson,
        attachments: { blob },
        sessionId: "s-9",
        requestId: "q-1",
        traceparent,
        blobs: [Buffer.from([1, 2, 3])],
        tagged: true,
        sessionMoved: false
      })
      expect(ok.outcome?.$case).toBe("resultJson")
      expect(JSON.parse(ok.outcome?.value.toString() ?? "null")).toEqual({
        x: [1, "two"],
        b: { __snakepit__: "bytes", blob: 0 }
      })
      expect(ok.attachments).toEqual({ out: Buffer.from([0, 1, 2, 255, 9]) })
      expect(ok.blobs).toEqual([Buffer.from([3, 2, 1])])
      expect(ok.tagged).toBe(true)

      const failed = yield* client.executeTool(request({ tool: "missing" }))
      expect(failed.outcome).toEqual({
        $case: "error",
        value: {
          kind: Proto.ToolError_Kind.TOOL_NOT_FOUND,
          type: "",
          message: "no tool named missing",
          traceback: "",
          availableTools: ["echo", "add"],
          path: ""
        }
      })
    })
  )

  it.scopedLive("interrupting an in-flight executeTool cancels the RPC on the server", () =>
    Effect.gen(function* () {
      const started = signal("handler started")
      const cancelled = signal("server saw cancellation")
      const client = yield* connect({
        executeTool: (call) => {
          call.on("cancelled", () => cancelled.raise())
          started.raise()
          // Never answers.
        }
      })
      const fiber = yield* Effect.fork(client.executeTool(request({ tool: "slow" })))
      yield* started.await()
      expect(cancelled.raised).toBe(false)
      const exit = yield* Fiber.interrupt(fiber)
      expect(Exit.isInterrupted(exit)).toBe(true)
      yield* cancelled.await()
      expect(cancelled.raised).toBe(true)
    })
  )

  it.scopedLive("a deadline the server does not meet fails with GrpcDeadlineExceeded", () =>
    Effect.gen(function* () {
      const client = yield* connect({ executeTool: () => {} })
      const started = Date.now()
      const error = yield* client
        .executeTool(request(), { deadline: "200 millis" })
        .pipe(Effect.flip, Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => new Error("hung") }))
      expect(error).toBeInstanceOf(GrpcDeadlineExceeded)
      expectTag(error, "GrpcDeadlineExceeded")
      expect(error.method).toBe("ExecuteTool")
      expect(error.code).toBe(status.DEADLINE_EXCEEDED)
      expect(Date.now() - started).toBeGreaterThanOrEqual(150)
    })
  )

  it.scopedLive("a host-side timeout cancels the call on the server and fails with GrpcDeadlineExceeded", () =>
    Effect.gen(function* () {
      const cancelled = signal("server saw cancellation")
      let deadlineSent: unknown = "unset"
      const client = yield* connect({
        executeTool: (call) => {
          deadlineSent = call.getDeadline()
          call.on("cancelled", () => cancelled.raise())
          // Never answers.
        }
      })
      const started = Date.now()
      const error = yield* client
        .executeTool(request(), { timeout: "200 millis" })
        .pipe(Effect.flip, Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => new Error("hung") }))
      expectTag(error, "GrpcDeadlineExceeded")
      expect(error.message).toBe("ExecuteTool: deadline exceeded (no answer within the timeout of 200 ms)")
      expect(Date.now() - started).toBeGreaterThanOrEqual(190)
      yield* cancelled.await()
      // Nothing went on the wire: the peer has no deadline to keep.
      expect(deadlineSent).toBe(Infinity)
    })
  )

  describe("status mapping", () => {
    it.scopedLive("server statuses become typed errors", () =>
      Effect.gen(function* () {
        const client = yield* connect({
          executeTool: (call, callback) => {
            switch (call.request.tool) {
              case "unavailable":
                return callback({ code: status.UNAVAILABLE, details: "going away" })
              case "internal":
                return callback({ code: status.INTERNAL, details: "kaboom" })
              case "exhausted":
                return callback({ code: status.RESOURCE_EXHAUSTED, details: "too big" })
              default:
                return callback(serviceError(status.FAILED_PRECONDITION, "not ready"))
            }
          }
        })
        const fail = (tool: string) => Effect.flip(client.executeTool(request({ tool })))

        const unavailable = expectTag(yield* fail("unavailable"), "GrpcUnavailable")
        expect(unavailable).toBeInstanceOf(GrpcUnavailable)
        expect(unavailable).toMatchObject({ method: "ExecuteTool", code: status.UNAVAILABLE, details: "going away" })

        const internal = expectTag(yield* fail("internal"), "GrpcFailure")
        expect(internal).toBeInstanceOf(GrpcFailure)
        expect(internal).toMatchObject({
          method: "ExecuteTool",
          code: status.INTERNAL,
          codeName: "INTERNAL",
          details: "kaboom"
        })
        expect(internal.message).toBe("ExecuteTool: INTERNAL (kaboom)")

        const exhausted = expectTag(yield* fail("exhausted"), "GrpcMessageTooLarge")
        expect(exhausted).toMatchObject({ code: status.RESOURCE_EXHAUSTED, details: "too big" })

        const precondition = expectTag(yield* fail("other"), "GrpcFailure")
        expect(precondition).toMatchObject({ codeName: "FAILED_PRECONDITION", details: "not ready" })

        // Unimplemented methods (no handler registered) are GrpcFailure too.
        const unimplemented = expectTag(yield* Effect.flip(client.health()), "GrpcFailure")
        expect(unimplemented).toMatchObject({ method: "Health", code: status.UNIMPLEMENTED, codeName: "UNIMPLEMENTED" })
      })
    )

    it("fromServiceError maps each status", () => {
      const of = (code: number, details = "d", message = "m") => fromServiceError("Ping", { code, details, message })
      expect(of(status.UNAVAILABLE)).toBeInstanceOf(GrpcUnavailable)
      expect(of(status.DEADLINE_EXCEEDED)).toBeInstanceOf(GrpcDeadlineExceeded)
      expect(of(status.RESOURCE_EXHAUSTED)).toBeInstanceOf(GrpcMessageTooLarge)
      const internal = of(status.INTERNAL, "kaboom")
      expect(internal).toBeInstanceOf(GrpcFailure)
      expect(internal).toMatchObject({
        _tag: "GrpcFailure",
        method: "Ping",
        code: 13,
        codeName: "INTERNAL",
        details: "kaboom"
      })
      expect(of(status.CANCELLED)).toMatchObject({ _tag: "GrpcFailure", codeName: "CANCELLED" })
      expect(of(status.UNIMPLEMENTED)).toMatchObject({ _tag: "GrpcFailure", codeName: "UNIMPLEMENTED" })
      // An unknown code keeps its number as the name.
      expect(of(99)).toMatchObject({ _tag: "GrpcFailure", code: 99, codeName: "99" })
      // Empty details fall back to the error message.
      expect(of(status.UNAVAILABLE, "", "connect ECONNREFUSED")).toMatchObject({ details: "connect ECONNREFUSED" })
      expect(of(status.UNAVAILABLE).message).toBe("Ping: peer unavailable (d)")
      expect(of(status.DEADLINE_EXCEEDED).message).toBe("Ping: deadline exceeded (d)")
      expect(of(status.RESOURCE_EXHAUSTED).message).toBe("Ping: message too large (d)")
    })
  })

  describe("maxMessageBytes", () => {
    it.scopedLive("a response larger than the limit fails with GrpcMessageTooLarge", () =>
      Effect.gen(function* () {
        const client = yield* connect(
          {
            executeTool: (call, callback) =>
              callback(null, resultOf(Buffer.alloc(call.request.tool === "big" ? 4096 : 16, 0x61)))
          },
          { maxMessageBytes: 1024 }
        )
        // Small messages still pass.
        const small = yield* client.executeTool(request({ tool: "small" }))
        expect(small.outcome?.value).toEqual(Buffer.alloc(16, 0x61))
        const error = expectTag(yield* Effect.flip(client.executeTool(request({ tool: "big" }))), "GrpcMessageTooLarge")
        expect(error.code).toBe(status.RESOURCE_EXHAUSTED)
        expect(error.method).toBe("ExecuteTool")
      })
    )

    it.scopedLive("a request larger than the limit fails with GrpcMessageTooLarge and never reaches the server", () =>
      Effect.gen(function* () {
        const seen: Array<string> = []
        const client = yield* connect(
          {
            executeTool: (call, callback) => {
              seen.push(call.request.tool)
              callback(null, resultOf(json(null)))
            }
          },
          { maxMessageBytes: 1024 }
        )
        const error = expectTag(
          yield* Effect.flip(client.executeTool(request({ tool: "big", argsJson: Buffer.alloc(4096, 0x61) }))),
          "GrpcMessageTooLarge"
        )
        expect(error.code).toBe(status.RESOURCE_EXHAUSTED)
        // The client still works afterwards.
        yield* client.executeTool(request({ tool: "small" }))
        expect(seen).toEqual(["small"])
      })
    )
  })

  describe("executeStreamingTool", () => {
    it.scopedLive("collects every chunk in order", () =>
      Effect.gen(function* () {
        const received: Array<Proto.ExecuteToolRequest> = []
        const client = yield* connect({
          executeStreamingTool: (call) => {
            received.push(call.request)
            const n = JSON.parse(call.request.argsJson.toString()) as number
            for (let i = 0; i < n; i++) call.write(chunkOf(i))
            call.end()
          }
        })
        const chunks = yield* Stream.runCollect(
          client.executeStreamingTool(request({ tool: "count", argsJson: json(25), sessionId: "s-2" }))
        )
        expect(Chunk.toReadonlyArray(chunks).map(dataOf)).toEqual(Array.from({ length: 25 }, (_, i) => i))
        expect(received[0]).toMatchObject({ tool: "count", sessionId: "s-2" })

        const none = yield* Stream.runCollect(client.executeStreamingTool(request({ argsJson: json(0) })))
        expect(Chunk.size(none)).toBe(0)
      })
    )

    it.scopedLive("Stream.take ends early and the server sees the cancellation", () =>
      Effect.gen(function* () {
        const cancelled = signal("server saw cancellation")
        let written = 0
        let ended = false
        const payload = "x".repeat(16 * 1024)
        const client = yield* connect({
          executeStreamingTool: (call: ServerWritableStream<Proto.ExecuteToolRequest, Proto.ToolChunk>) => {
            let stopped = false
            call.on("cancelled", () => {
              stopped = true
              cancelled.raise()
            })
            // Respects flow control: waits for 'drain' whenever write() says the buffer is full.
            const pump = () => {
              while (!stopped && written < 1000) {
                const more = call.write({
                  outcome: { $case: "dataJson", value: json({ i: written, payload }) },
                  attachments: {},
                  blobs: [],
                  tagged: false
                })
                written++
                if (!more) {
                  call.once("drain", pump)
                  return
                }
              }
              if (!stopped) {
                ended = true
                call.end()
              }
            }
            pump()
          }
        })
        const chunks = yield* client
          .executeStreamingTool(request({ tool: "firehose" }))
          .pipe(
            Stream.take(3),
            Stream.runCollect,
            Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => new Error("take(3) did not finish") })
          )
        expect(Chunk.toReadonlyArray(chunks).map((c) => (dataOf(c) as { i: number }).i)).toEqual([0, 1, 2])
        yield* cancelled.await()
        expect(cancelled.raised).toBe(true)
        expect(ended).toBe(false)
        expect(written).toBeLessThan(1000)
      })
    )

    it.scopedLive("chunks before an error status are delivered, then the stream fails with the typed error", () =>
      Effect.gen(function* () {
        const client = yield* connect({
          executeStreamingTool: (call) => {
            call.write(chunkOf(0))
            call.write(chunkOf(1))
            call.emit("error", serviceError(status.INTERNAL, "generator exploded"))
          }
        })
        const seen: Array<unknown> = []
        const result = yield* client.executeStreamingTool(request({ tool: "boom" })).pipe(
          Stream.tap((chunk) => Effect.sync(() => seen.push(dataOf(chunk)))),
          Stream.runCollect,
          Effect.either
        )
        expect(seen).toEqual([0, 1])
        expect(Either.isLeft(result)).toBe(true)
        if (Either.isLeft(result)) {
          const error = expectTag(result.left, "GrpcFailure")
          expect(error).toMatchObject({
            method: "ExecuteStreamingTool",
            code: status.INTERNAL,
            codeName: "INTERNAL",
            details: "generator exploded"
          })
        }

        // Stream.either keeps the chunks and the failure in one collection.
        const both = yield* Stream.runCollect(Stream.either(client.executeStreamingTool(request({ tool: "boom" }))))
        const items = Chunk.toReadonlyArray(both)
        expect(items.length).toBe(3)
        expect(items.slice(0, 2).map((e) => (Either.isRight(e) ? dataOf(e.right) : e))).toEqual([0, 1])
        const last = items[2]
        expect(last !== undefined && Either.isLeft(last) ? last.left._tag : last).toBe("GrpcFailure")
      })
    )

    it.scopedLive("an UNAVAILABLE status mid-stream fails with GrpcUnavailable", () =>
      Effect.gen(function* () {
        const client = yield* connect({
          executeStreamingTool: (call) => {
            call.write(chunkOf(0))
            call.emit("error", serviceError(status.UNAVAILABLE, "worker went away"))
          }
        })
        const error = yield* client.executeStreamingTool(request()).pipe(Stream.runCollect, Effect.flip)
        expect(expectTag(error, "GrpcUnavailable").details).toBe("worker went away")
      })
    )
  })

  it.live("connecting where nothing listens fails with GrpcConnectTimeout naming the address", () =>
    Effect.gen(function* () {
      const port = yield* freePort
      const address = `127.0.0.1:${port}`
      const started = Date.now()
      const error = yield* BridgeClient.make({ address, connectTimeout: "300 millis" }).pipe(
        Effect.scoped,
        Effect.flip,
        Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => new Error("connect did not time out") })
      )
      expect(error._tag).toBe("GrpcConnectTimeout")
      expect(error.address).toBe(address)
      expect(error.timeoutMs).toBe(300)
      expect(error.message).toContain(address)
      expect(Date.now() - started).toBeGreaterThanOrEqual(250)
    })
  )

  describe("closing the scope closes the channel", () => {
    /** A client whose scope is already closed, after one successful call proved it worked. */
    const closedClient = Effect.gen(function* () {
      const { address } = yield* serve({
        ping: (call, callback) =>
          callback(null, { message: call.request.message, pid: 1, workerId: "", pythonVersion: "", adapter: "" }),
        executeStreamingTool: (call) => {
          call.write(chunkOf(0))
          call.end()
        }
      })
      const scope = yield* Scope.make()
      const client = yield* BridgeClient.make({ address }).pipe(Scope.extend(scope))
      expect((yield* client.ping("before")).message).toBe("before")
      yield* Scope.close(scope, Exit.void)
      return client
    })

    const hung = new Error("call on a closed client hung")
    const bounded = <A, E>(effect: Effect.Effect<A, E>) =>
      effect.pipe(Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => hung }), Effect.exit)

    it.scopedLive("later calls fail instead of hanging", () =>
      Effect.gen(function* () {
        const client = yield* closedClient
        const exits: Array<Exit.Exit<unknown, unknown>> = [
          yield* bounded(client.ping("after")),
          yield* bounded(Stream.runCollect(client.executeStreamingTool(request())))
        ]
        for (const exit of exits) {
          expect(Exit.isFailure(exit)).toBe(true)
          if (Exit.isFailure(exit)) expect(Chunk.toReadonlyArray(Cause.failures(exit.cause))).not.toContain(hung)
        }
      })
    )

    // grpc-js throws "Channel has been shut down" synchronously once the channel is closed;
    // the client must turn that into a typed GrpcError, not a defect.
    const expectTypedFailure = (exit: Exit.Exit<unknown, unknown>) => {
      expect(Exit.isFailure(exit)).toBe(true)
      if (Exit.isFailure(exit)) {
        expect(exit.cause._tag, String(exit.cause)).toBe("Fail")
        if (exit.cause._tag === "Fail") {
          expect(exit.cause.error).not.toBe(hung)
          expect((exit.cause.error as GrpcError)._tag).toMatch(/^Grpc(Unavailable|Failure)$/)
        }
      }
    }

    it.scopedLive("a unary call fails with a typed GrpcError, not a defect", () =>
      Effect.gen(function* () {
        const client = yield* closedClient
        expectTypedFailure(yield* bounded(client.ping("after")))
      })
    )

    it.scopedLive("a streaming call fails with a typed GrpcError, not a defect", () =>
      Effect.gen(function* () {
        const client = yield* closedClient
        expectTypedFailure(yield* bounded(Stream.runCollect(client.executeStreamingTool(request()))))
      })
    )
  })
})
