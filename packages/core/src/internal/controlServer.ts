/**
 * Serves the control API (`Control.ControlRpcs`) of this host on a unix socket: the directory is
 * made 0700 and the socket 0600 before anything can connect through them, so only this user's
 * processes reach it. No TCP listener, ever.
 *
 * @internal
 */
import { chmodSync, mkdirSync, rmSync, statSync } from "node:fs"
import { dirname } from "node:path"
import { NodeSocketServer } from "@effect/platform-node"
import { RpcSerialization, RpcServer } from "@effect/rpc"
import { Clock, Effect, Layer, Schema, type Scope } from "effect"
import { ControlRpcs, HostInfo, WorkerSummary } from "../Control.js"
import type { SnakepitService } from "../Snakepit.js"

/** The control socket could not be served; the pools run on without it. */
export class ControlServeError extends Schema.TaggedError<ControlServeError>()("ControlServeError", {
  socket: Schema.String,
  reason: Schema.String
}) {}

/** Unix socket paths are limited to 107 bytes on Linux (103 on macOS). */
const MAX_SOCKET_PATH = process.platform === "linux" ? 107 : 103

const prepareDirectory = (socket: string) =>
  Effect.try({
    try: () => {
      const dir = dirname(socket)
      mkdirSync(dir, { recursive: true, mode: 0o700 })
      // mkdir leaves an existing directory's mode alone, and the umask may have narrowed it.
      chmodSync(dir, 0o700)
      // The path carries this run's id: a file there is a leftover of this very run, never another host's.
      rmSync(socket, { force: true })
    },
    catch: (error) => new ControlServeError({ socket, reason: `cannot prepare its directory: ${String(error)}` })
  })

const handlers = (service: SnakepitService, host: HostInfo) =>
  ControlRpcs.toLayer({
    Host: () => Effect.succeed(host),
    Pools: () => Effect.forEach(service.pools, (pool) => Effect.orDie(service.report(pool))),
    Workers: ({ pool }) => Effect.map(service.report(pool), (report) => report.workers),
    Tools: ({ pool }) => service.describeTools(pool),
    Latency: ({ pool }) => Effect.map(service.report(pool), (report) => report.tools),
    RestartWorker: ({ workerId }) => Effect.map(service.restartWorker(workerId), (info) => new WorkerSummary(info)),
    StopWorker: ({ workerId }) => service.stopWorker(workerId),
    Resize: ({ max, min, pool }) => service.resize(min === max ? min : { min, max }, pool),
    Drain: ({ pool }) => service.drain(pool),
    Events: () => service.events
  })

/**
 * Serves the control API for `service` on `socket` in the current scope; the socket file is
 * removed when the scope closes.
 */
export const serve = (
  service: SnakepitService,
  options: { readonly socket: string; readonly runId: string }
): Effect.Effect<void, ControlServeError, Scope.Scope> =>
  Effect.gen(function* () {
    const { socket } = options
    if (Buffer.byteLength(socket) > MAX_SOCKET_PATH) {
      return yield* new ControlServeError({
        socket,
        reason: `the path is longer than the ${MAX_SOCKET_PATH} bytes a unix socket allows: choose a shorter dataDir`
      })
    }
    yield* prepareDirectory(socket)
    const host = new HostInfo({
      runId: options.runId,
      pid: process.pid,
      startedAt: new Date(yield* Clock.currentTimeMillis),
      pools: service.pools,
      socket
    })
    yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(socket, { force: true })))
    yield* Layer.build(
      RpcServer.layer(ControlRpcs).pipe(
        Layer.provide(handlers(service, host)),
        Layer.provide(RpcServer.layerProtocolSocketServer),
        Layer.provide(RpcSerialization.layerNdjson),
        Layer.provide(NodeSocketServer.layer({ path: socket }))
      )
    ).pipe(
      Effect.mapError((error) => new ControlServeError({ socket, reason: `cannot listen: ${String(error.cause)}` }))
    )
    yield* Effect.try({
      try: () => {
        chmodSync(socket, 0o600)
        if ((statSync(socket).mode & 0o777) !== 0o600) throw new Error("mode did not stick")
      },
      catch: (error) =>
        new ControlServeError({ socket, reason: `cannot restrict the socket to mode 0600: ${String(error)}` })
    })
  })
