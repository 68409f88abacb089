import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs"
import { connect as netConnect } from "node:net"
import { networkInterfaces, tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { credentials, Metadata, type ServiceError, status } from "@grpc/grpc-js"
import { Deferred, Effect, Exit, Fiber, Ref, Scope } from "effect"
import { HostBridgeServer, Proto } from "../src/index.js"

const request = (overrides: Partial<Proto.CallHostToolRequest> = {}): Proto.CallHostToolRequest => ({
  tool: "echo",
  argsJson: Buffer.from('{"x":1}'),
  attachments: {},
  sessionId: "s-1",
  workerId: "w-1",
  blobs: [],
  tagged: false,
  ...overrides
})

const ok = (value: unknown, blobs: Array<Buffer> = []): Proto.CallHostToolResponse => ({
  outcome: { $case: "resultJson", value: Buffer.from(JSON.stringify(value)) },
  blobs,
  tagged: blobs.length > 0
})

const spec: Proto.ToolSpec = {
  name: "echo",
  description: "returns its arguments",
  parameters: [{ name: "x", type: "number", required: true, defaultJson: Buffer.alloc(0) }],
  streaming: false,
  typesJson: ""
}

/** Echoes the request's tool and arguments back. */
const echo: HostBridgeServer.HostCallHandler = (req) =>
  Effect.succeed(ok({ tool: req.tool, args: JSON.parse(req.argsJson.toString("utf8")), worker: req.workerId }))

/** A scoped grpc-js client of the host bridge, as the Python client would be. */
const client = (address: string) =>
  Effect.acquireRelease(
    Effect.sync(
      () => new Proto.HostToolServiceClient(address, credentials.createInsecure(), { "grpc.enable_http_proxy": 0 })
    ),
    (c) => Effect.sync(() => c.close())
  )

const metadataWith = (secret: string | undefined): Metadata => {
  const metadata = new Metadata()
  if (secret !== undefined) metadata.set("x-snakepit-secret", secret)
  return metadata
}

type Result<A> = { readonly error: ServiceError } | { readonly value: A }

/** A call's outcome as a value, so tests can assert on statuses; interruption cancels the call. */
const call = (c: Proto.HostToolServiceClient, req: Proto.CallHostToolRequest, secret: string | undefined) =>
  Effect.async<Result<Proto.CallHostToolResponse>>((resume) => {
    const inflight = c.callHostTool(req, metadataWith(secret), { deadline: Date.now() + 10_000 }, (error, value) =>
      resume(Effect.succeed(error ? { error } : { value }))
    )
    return Effect.sync(() => inflight.cancel())
  })

const list = (c: Proto.HostToolServiceClient, secret: string | undefined) =>
  Effect.async<Result<Proto.ListHostToolsResponse>>((resume) => {
    c.listHostTools({}, metadataWith(secret), { deadline: Date.now() + 10_000 }, (error, value) =>
      resume(Effect.succeed(error ? { error } : { value }))
    )
  })

const codeOf = (result: Result<unknown>) => ("error" in result ? result.error.code : status.OK)

const resultOf = (result: Result<Proto.CallHostToolResponse>): unknown => {
  if ("error" in result) throw new Error(`call failed: ${result.error.message}`)
  const outcome = result.value.outcome
  if (outcome?.$case !== "resultJson") throw new Error(`no result: ${JSON.stringify(outcome)}`)
  return JSON.parse(outcome.value.toString("utf8"))
}

/** Whether a TCP connection to host:port is accepted (true) or refused/unreachable (false). */
const tcpAccepts = (host: string, port: number) =>
  Effect.async<boolean>((resume) => {
    const socket = netConnect({ host, port })
    const done = (accepted: boolean) => {
      socket.destroy()
      resume(Effect.succeed(accepted))
    }
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
    socket.setTimeout(2_000, () => done(false))
  })

const portOf = (address: string) => Number(address.slice(address.lastIndexOf(":") + 1))

describe("HostBridgeServer", () => {
  it.scopedLive("binds an ephemeral loopback port and exposes address and secret, and nothing for an environment", () =>
    Effect.gen(function* () {
      const server = yield* HostBridgeServer.make({ handler: echo, listTools: () => [spec] })
      expect(server.address).toMatch(/^127\.0\.0\.1:\d+$/)
      expect(portOf(server.address)).toBeGreaterThan(0)
      expect(server.secret).toMatch(/^[0-9a-f]{64}$/)
      // Workers get the address and the secret on stdin: nothing here is meant for an environment.
      expect(Object.keys(server).sort()).toEqual(["address", "secret"])
      expect(Object.keys(HostBridgeServer)).not.toContain("ENV_HOST_SECRET")

      const other = yield* HostBridgeServer.make({ handler: echo, listTools: () => [], secret: "given-secret" })
      expect(other.secret).toBe("given-secret")
      expect(other.secret).not.toBe(server.secret)
    })
  )

  it.scopedLive("a call with the right secret runs the handler and returns its response", () =>
    Effect.gen(function* () {
      const server = yield* HostBridgeServer.make({ handler: echo, listTools: () => [spec] })
      const c = yield* client(server.address)
      const result = yield* call(c, request(), server.secret)
      expect(resultOf(result)).toEqual({ tool: "echo", args: { x: 1 }, worker: "w-1" })

      const listed = yield* list(c, server.secret)
      expect("value" in listed && listed.value.tools).toEqual([spec])
    })
  )

  it.scopedLive("binary blobs travel raw both ways, beside the JSON", () =>
    Effect.gen(function* () {
      const server = yield* HostBridgeServer.make({
        // Returns the request's blobs reversed, each reversed too.
        handler: (req) =>
          Effect.succeed(
            ok(
              { blob: 0, tagged: req.tagged },
              [...req.blobs].reverse().map((b) => Buffer.from(b).reverse())
            )
          ),
        listTools: () => []
      })
      const c = yield* client(server.address)
      const result = yield* call(
        c,
        request({ blobs: [Buffer.from([1, 2]), Buffer.from([3])], tagged: true }),
        server.secret
      )
      if ("error" in result) throw new Error(result.error.message)
      expect(result.value.blobs).toEqual([Buffer.from([3]), Buffer.from([2, 1])])
      expect(result.value.tagged).toBe(true)
      expect(resultOf(result)).toEqual({ blob: 0, tagged: true })
    })
  )

  it.scopedLive("calls without the secret or with a wrong one are UNAUTHENTICATED and never reach the handler", () =>
    Effect.gen(function* () {
      const runs = yield* Ref.make(0)
      const server = yield* HostBridgeServer.make({
        handler: (req) =>
          Effect.zipRight(
            Ref.update(runs, (n) => n + 1),
            echo(req)
          ),
        listTools: () => [spec]
      })
      const c = yield* client(server.address)
      const sameLength = server.secret.replace(/.$/, (last) => (last === "0" ? "1" : "0"))
      expect(sameLength).toHaveLength(server.secret.length)
      for (const secret of [undefined, "", sameLength, "short", `${server.secret}0`]) {
        const result = yield* call(c, request(), secret)
        expect(codeOf(result), `secret ${JSON.stringify(secret)}`).toBe(status.UNAUTHENTICATED)
        expect(codeOf(yield* list(c, secret))).toBe(status.UNAUTHENTICATED)
      }
      expect(yield* Ref.get(runs)).toBe(0)
      // The same channel still works once the secret is right.
      expect(codeOf(yield* call(c, request(), server.secret))).toBe(status.OK)
      expect(yield* Ref.get(runs)).toBe(1)
    })
  )

  it.scopedLive("cancelling the client call interrupts the handler fiber", () =>
    Effect.gen(function* () {
      const started = yield* Deferred.make<void>()
      const interrupted = yield* Deferred.make<void>()
      const server = yield* HostBridgeServer.make({
        handler: () =>
          Deferred.succeed(started, undefined).pipe(
            Effect.zipRight(Effect.never),
            Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))
          ),
        listTools: () => []
      })
      const c = yield* client(server.address)
      const fiber = yield* Effect.fork(call(c, request(), server.secret))
      yield* Deferred.await(started).pipe(Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => "not started" }))
      // Interrupting the client's Effect cancels the RPC on the wire.
      yield* Fiber.interrupt(fiber)
      yield* Deferred.await(interrupted).pipe(
        Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => "handler was not interrupted" })
      )
    })
  )

  it.scopedLive("a handler defect becomes INTERNAL with its message, and the server keeps serving", () =>
    Effect.gen(function* () {
      const server = yield* HostBridgeServer.make({
        handler: (req) => (req.tool === "boom" ? Effect.die(new Error("kaboom")) : echo(req)),
        listTools: () => []
      })
      const c = yield* client(server.address)
      const result = yield* call(c, request({ tool: "boom" }), server.secret)
      expect(codeOf(result)).toBe(status.INTERNAL)
      expect("error" in result && result.error.details).toContain("kaboom")

      const thrower = yield* HostBridgeServer.make({
        handler: () => {
          throw new Error("threw while building the effect")
        },
        listTools: () => []
      })
      const c2 = yield* client(thrower.address)
      const thrown = yield* call(c2, request(), thrower.secret)
      expect(codeOf(thrown)).toBe(status.INTERNAL)
      expect("error" in thrown && thrown.error.details).toContain("threw while building the effect")

      expect(resultOf(yield* call(c, request(), server.secret))).toMatchObject({ tool: "echo" })
    })
  )

  it.scopedLive("listens on loopback only", () =>
    Effect.gen(function* () {
      const server = yield* HostBridgeServer.make({ handler: echo, listTools: () => [] })
      const port = portOf(server.address)
      expect(yield* tcpAccepts("127.0.0.1", port)).toBe(true)
      const external = Object.values(networkInterfaces())
        .flat()
        .filter((info) => info !== undefined && !info.internal)
        .map((info) => info!.address)
      for (const host of ["::1", ...external]) {
        expect(yield* tcpAccepts(host, port), `reachable on ${host}`).toBe(false)
      }
    })
  )

  it.scopedLive("on a Unix socket: mode 0600, calls need the secret, the file goes with the scope", () =>
    Effect.gen(function* () {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(join(tmpdir(), "snakepit-host-"))),
        (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
      )
      const socketPath = join(dir, "host.sock")
      yield* Effect.scoped(
        Effect.gen(function* () {
          const server = yield* HostBridgeServer.make({ handler: echo, listTools: () => [], socketPath })
          expect(server.address).toBe(`unix:${socketPath}`)
          expect(statSync(socketPath).isSocket()).toBe(true)
          expect(statSync(socketPath).mode & 0o777).toBe(0o600)
          const c = yield* client(server.address)
          expect(resultOf(yield* call(c, request(), server.secret))).toMatchObject({ worker: "w-1" })
          expect(codeOf(yield* call(c, request(), undefined))).toBe(status.UNAUTHENTICATED)
        })
      )
      // Closing the server removes its socket file.
      expect(existsSync(socketPath)).toBe(false)
    })
  )

  it.live("a socket path that cannot be bound fails with HostBridgeStartError", () =>
    Effect.gen(function* () {
      const exit = yield* Effect.exit(
        Effect.scoped(
          HostBridgeServer.make({
            handler: echo,
            listTools: () => [],
            socketPath: join(tmpdir(), "snakepit-no-such-dir", "x", "host.sock")
          })
        )
      )
      expect(Exit.isFailure(exit)).toBe(true)
      if (Exit.isFailure(exit)) {
        const error = exit.cause._tag === "Fail" ? exit.cause.error : undefined
        expect(error).toBeInstanceOf(HostBridgeServer.HostBridgeStartError)
        expect(error?.address).toContain("snakepit-no-such-dir")
      }
    })
  )

  it.scopedLive("closing the scope stops the server: the port refuses connections and running handlers end", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const started = yield* Deferred.make<void>()
      const interrupted = yield* Deferred.make<void>()
      const server = yield* HostBridgeServer.make({
        handler: () =>
          Deferred.succeed(started, undefined).pipe(
            Effect.zipRight(Effect.never),
            Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))
          ),
        listTools: () => [],
        shutdownTimeout: "200 millis"
      }).pipe(Scope.extend(scope))
      const port = portOf(server.address)
      expect(yield* tcpAccepts("127.0.0.1", port)).toBe(true)

      // The client outlives the server's scope, so only the server's shutdown can end the call.
      const c = yield* client(server.address)
      const pending = yield* Effect.fork(call(c, request(), server.secret))
      yield* Deferred.await(started)
      yield* Scope.close(scope, Exit.void).pipe(Effect.timeout("5 seconds"))
      // The scope closed only once the handler had been interrupted.
      expect(yield* Deferred.isDone(interrupted)).toBe(true)
      expect(yield* tcpAccepts("127.0.0.1", port)).toBe(false)
      const result = yield* Fiber.join(pending)
      expect(codeOf(result)).not.toBe(status.OK)
    })
  )
})
