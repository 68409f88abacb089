/**
 * What both transports must carry the same way, and what each must refuse: real workers.
 */
import { execFileSync } from "node:child_process"
import { mkdtempSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { credentials, Metadata } from "@grpc/grpc-js"
import { BridgeClient, Proto } from "@snakepit/grpc"
import { ProcessInfo } from "@snakepit/registry"
import { Fixtures, Processes } from "@snakepit/testkit"
import { Chunk, Effect, Fiber, Schedule, Stream } from "effect"
import type { Transport } from "../src/index.js"

const fixtures = fileURLToPath(new URL("./fixtures/python", import.meta.url))
const python = process.env.SNAKEPIT_PYTHON ?? "python3"
const MB = 1024 * 1024

/** `length` bytes of a pattern a test can check end to end. */
const pattern = (length: number) => {
  const bytes = new Uint8Array(length)
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + 7) & 0xff
  return bytes
}

describe.each<Transport>(["local", "grpc"])("%s transport", (transport) => {
  it.live("a tool writing garbage to fd 1 and fd 2 mid-call and mid-stream never corrupts the channel", () =>
    Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          expect(yield* pool.execute("noisy_call", { value: "intact" })).toEqual({ value: "intact" })
          const chunks = yield* Stream.runCollect(pool.executeStream("noisy_stream", { count: 5 }))
          expect(Chunk.toReadonlyArray(chunks)).toEqual([0, 1, 2, 3, 4].map((i) => ({ i })))
          expect(yield* pool.stats()).toMatchObject({ errors: 0, restarts: 0 })
        }),
      { size: 1, transport, adapter: "noisy", pythonPath: [fixtures] }
    )
  )

  it.live("binary values cross raw both ways, 50 MB each way, and too large is a typed error", () =>
    Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          const small = yield* pool.execute("echo", {
            value: { nested: [Buffer.from("buf"), new Uint8Array([0, 255])] }
          })
          expect(small).toEqual({ nested: [new Uint8Array(Buffer.from("buf")), new Uint8Array([0, 255])] })
          const big = pattern(50 * MB)
          const back = (yield* pool.execute("echo", { value: big })) as Uint8Array
          expect(back).toBeInstanceOf(Uint8Array)
          expect(back.byteLength).toBe(big.byteLength)
          expect(Buffer.compare(Buffer.from(back), Buffer.from(big))).toBe(0)
          // Over maxMessageBytes (64 MiB): refused, typed, and the pool keeps serving.
          const tooBig = yield* Effect.flip(pool.execute("echo", { value: new Uint8Array(70 * MB) }))
          expect(tooBig._tag).toBe("TransportError")
          if (tooBig._tag === "TransportError") expect(tooBig.reason).toBe("message_too_large")
          expect(yield* pool.execute("add", { a: 1, b: 2 })).toBe(3)
        }),
      { size: 1, transport }
    )
  )

  it.live("a caller's sessionMoved reaches the tool as ctx.session_moved, on calls and streams, and only there", () =>
    Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          expect(yield* pool.execute("moved_call", {}, { session: "s" })).toEqual({ session: "s", moved: false })
          expect(yield* pool.execute("moved_call", {}, { session: "s", sessionMoved: true })).toEqual({
            session: "s",
            moved: true
          })
          // The flag belongs to the one call that carried it.
          expect(yield* pool.execute("moved_call", {}, { session: "s" })).toEqual({ session: "s", moved: false })
          const moved = yield* Stream.runCollect(
            pool.executeStream("moved_stream", { count: 2 }, { session: "s", sessionMoved: true })
          )
          expect(Chunk.toReadonlyArray(moved)).toEqual([
            { i: 0, moved: true },
            { i: 1, moved: true }
          ])
          const stayed = yield* Stream.runCollect(pool.executeStream("moved_stream", { count: 1 }, { session: "s" }))
          expect(Chunk.toReadonlyArray(stayed)).toEqual([{ i: 0, moved: false }])
        }),
      { size: 1, transport, adapter: "moved_flag", pythonPath: [fixtures] }
    )
  )

  it.live("host tools over the worker's transport, with binary values", () =>
    Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          const error = yield* Effect.flip(pool.execute("call_host", { tool: "anything", args: {} }))
          expect(error._tag).toBe("PythonError")
        }),
      { size: 1, transport }
    )
  )
})

describe("local transport", () => {
  it.live("the worker's environment holds no secret, and it listens on no port", () =>
    Fixtures.withPool(
      (pool) =>
        Effect.gen(function* () {
          const env = (yield* pool.execute("env", {
            names: ["SNAKEPIT_HOST_SECRET", "SNAKEPIT_HOST_BRIDGE"]
          })) as Record<string, unknown>
          expect(env).toEqual({ SNAKEPIT_HOST_SECRET: null, SNAKEPIT_HOST_BRIDGE: null })
          const [worker] = yield* pool.workers()
          // No listening socket of the worker's in /proc/net: nothing another process could reach.
          const inodes = socketInodes(worker!.pid)
          expect(listeningInodes().filter((inode) => inodes.has(inode))).toEqual([])
        }),
      { size: 1, transport: "local" }
    )
  )

  it.live("a worker in a fresh venv without grpcio serves the showcase", () =>
    Effect.gen(function* () {
      const base = execFileSync(python, ["-c", "import sys; print(getattr(sys, '_base_executable', sys.executable))"], {
        encoding: "utf8"
      }).trim()
      const venv = mkdtempSync(join(tmpdir(), "snakepit-venv-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(venv, { recursive: true, force: true })))
      execFileSync(base, ["-m", "venv", "--without-pip", venv])
      const venvPython = join(venv, "bin", "python")
      expect(() => execFileSync(venvPython, ["-c", "import grpc"], { stdio: "ignore" })).toThrow()
      yield* Fixtures.withPool(
        (pool) =>
          Effect.gen(function* () {
            expect(yield* pool.execute("add", { a: 40, b: 2 })).toBe(42)
            // The worker runs the venv's own interpreter.
            const { pid } = (yield* pool.execute("ping", {})) as { pid: number }
            expect(ProcessInfo.commandLine(pid)?.startsWith(`${venvPython} `)).toBe(true)
          }),
        { size: 1, transport: "local", python: venvPython }
      )
    }).pipe(Effect.scoped)
  )

  it.live(
    "a broken frame, a frame over the limit, an unknown kind or a closed channel: typed, replaced, others unaffected",
    () =>
      Fixtures.withPool(
        (pool) =>
          Effect.gen(function* () {
            for (const fault of ["garbage_frame", "huge_frame", "unknown_kind", "close_channel"]) {
              const before = yield* pool.workers()
              // Another caller on the other worker is in flight while one worker breaks.
              const other = yield* Effect.fork(pool.execute("ping", {}))
              const error = yield* Effect.flip(pool.execute(fault, {}))
              expect(["TransportError", "WorkerCrashed"], fault).toContain(error._tag)
              if (fault === "huge_frame" && error._tag === "TransportError")
                expect(error.reason).toBe("message_too_large")
              if (fault === "garbage_frame" && error._tag === "TransportError")
                expect(error.reason).toBe("protocol_error")
              expect(yield* Fiber.join(other)).toHaveProperty("pid")
              // The broken worker is replaced; the pool serves again with two workers.
              yield* Processes.awaitCondition(`a broken worker replaced after ${fault}`, () =>
                before.some((w) => !Processes.isAlive(w.pid))
              )
              yield* pool.awaitReady()
              const after = yield* pool.workers()
              expect(after.length).toBe(2)
              expect(after.every((w) => Processes.isAlive(w.pid))).toBe(true)
            }
            expect((yield* pool.stats()).restarts).toBeGreaterThanOrEqual(4)
          }),
        { size: 2, adapter: "channel_faults", pythonPath: [fixtures], transport: "local" }
      )
  )

  it.live("a worker that stops reading its channel: the calls fail typed, the worker is stopped", () =>
    Fixtures.withWorker(
      (worker) =>
        Effect.gen(function* () {
          // The one tool thread is busy, so nothing reads the call socket: a large call stalls.
          const busy = yield* Effect.fork(worker.execute("sleep", { ms: 20_000 }))
          yield* worker.health().pipe(
            Effect.filterOrFail(
              (h) => h.activeCalls > 0,
              () => new Error("the sleep has not started")
            ),
            Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds")))
          )
          const stalled = yield* Effect.flip(worker.execute("echo", { value: pattern(16 * MB) }))
          expect(stalled._tag === "TransportError" || stalled._tag === "WorkerCrashed").toBe(true)
          const first = yield* Effect.flip(Fiber.join(busy))
          expect(["TransportError", "WorkerCrashed"]).toContain(first._tag)
          yield* Processes.awaitGone([worker.pid])
        }),
      { transport: "local", stallTimeout: "1 second" }
    )
  )
})

describe("gRPC transport", () => {
  it.live("a stray local process without the worker's token is refused", () =>
    Fixtures.withWorker(
      (worker) =>
        Effect.gen(function* () {
          const client = new Proto.BridgeServiceClient(worker.address, credentials.createInsecure())
          yield* Effect.addFinalizer(() => Effect.sync(() => client.close()))
          const call = (metadata: Metadata) =>
            Effect.async<number>((resume) => {
              client.ping({ message: "" }, metadata, (error) => resume(Effect.succeed(error?.code ?? 0)))
            })
          expect(yield* call(new Metadata())).toBe(16) // UNAUTHENTICATED
          const wrong = new Metadata()
          wrong.set(BridgeClient.TOKEN_METADATA_KEY, "not-the-token")
          expect(yield* call(wrong)).toBe(16)
          const execute = yield* Effect.async<number>((resume) => {
            client.executeTool(
              {
                tool: "env",
                argsJson: Buffer.from('{"names":["PATH"]}'),
                attachments: {},
                sessionId: "",
                requestId: "",
                traceparent: "",
                blobs: [],
                tagged: false,
                sessionMoved: false
              },
              new Metadata(),
              (error) => resume(Effect.succeed(error?.code ?? 0))
            )
          })
          expect(execute).toBe(16)
          // The host itself, with the token, is served.
          expect(yield* worker.execute("add", { a: 1, b: 1 })).toBe(2)
        }).pipe(Effect.scoped),
      { transport: "grpc" }
    )
  )

  it.live("grpc.listen unix: a 0600 socket in a 0700 directory", () =>
    Fixtures.withWorker(
      (worker) =>
        Effect.gen(function* () {
          expect(worker.address.startsWith("unix:")).toBe(true)
          const path = worker.address.slice("unix:".length)
          expect(statSync(path).mode & 0o777).toBe(0o600)
          expect(statSync(dirname(path)).mode & 0o777).toBe(0o700)
          expect(yield* worker.execute("add", { a: 2, b: 3 })).toBe(5)
        }),
      { transport: "grpc", grpcListen: "unix" }
    )
  )
})

/** The inodes of `pid`'s sockets (Linux). */
const socketInodes = (pid: number): Set<string> => {
  const out = execFileSync("sh", ["-c", `ls -l /proc/${pid}/fd 2>/dev/null || true`], { encoding: "utf8" })
  return new Set([...out.matchAll(/socket:\[(\d+)\]/g)].map((m) => m[1]!))
}

/** Inodes of listening TCP and unix sockets on the machine. */
const listeningInodes = (): Array<string> => {
  const inodes: Array<string> = []
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    const lines = execFileSync("cat", [file], { encoding: "utf8" }).split("\n").slice(1)
    for (const line of lines) {
      const fields = line.trim().split(/\s+/)
      if (fields[3] === "0A") inodes.push(fields[9]!) // LISTEN
    }
  }
  for (const line of execFileSync("cat", ["/proc/net/unix"], { encoding: "utf8" }).split("\n").slice(1)) {
    const fields = line.trim().split(/\s+/)
    if (fields[3] === "00010000") inodes.push(fields[6]!) // __SO_ACCEPTCON: listening
  }
  return inodes
}
