/**
 * The wire between cluster members: TLS 1.2 with a pre-shared key derived from the cluster
 * secret. A peer that does not know the secret fails the handshake before a single RPC is
 * read, and the traffic is encrypted; no certificates to manage.
 */
import { createHash } from "node:crypto"
import * as Tls from "node:tls"
import { Runners, ShardingConfig } from "@effect/cluster"
import * as Socket from "@effect/platform/Socket"
import * as SocketServer from "@effect/platform/SocketServer"
import { NodeSocket } from "@effect/platform-node"
import { RpcClient, RpcSerialization } from "@effect/rpc"
import { Deferred, Effect, Exit, FiberSet, Layer, Option, Redacted, Runtime, Scope } from "effect"
import { recordWrites, type Written } from "./delivery.js"

const IDENTITY = "snakepit-cluster"
// ECDHE-PSK gives forward secrecy; plain PSK-AES is the fallback for older OpenSSL builds.
const CIPHERS = "ECDHE-PSK-CHACHA20-POLY1305:PSK-AES256-GCM-SHA384"

/** The 32-byte key both sides derive from the secret (so any secret length works). */
export const pskOf = (secret: Redacted.Redacted<string>): Buffer =>
  createHash("sha256")
    .update(`snakepit-cluster-psk\0${Redacted.value(secret)}`)
    .digest()

const tlsOptions = {
  ciphers: CIPHERS,
  minVersion: "TLSv1.2",
  // Node's PSK callbacks work with TLS 1.2 only.
  maxVersion: "TLSv1.2",
  // Small RPC frames must not wait for the peer's delayed ACK.
  noDelay: true
} as const

/** Connects to a runner, proving the secret; fails like `NodeSocket.makeNet` when it cannot. */
const connect = (psk: Buffer, host: string, port: number) =>
  NodeSocket.fromDuplex(
    Effect.scopeWith((scope) => {
      let conn: Tls.TLSSocket | undefined
      return Effect.flatMap(
        Scope.addFinalizer(
          scope,
          Effect.sync(() => {
            if (conn !== undefined && !conn.destroyed) conn.destroy()
          })
        ),
        () =>
          Effect.async<Tls.TLSSocket, Socket.SocketError>((resume) => {
            conn = Tls.connect({
              ...tlsOptions,
              host,
              port,
              // The peer proves itself with the key; there is no certificate to check.
              checkServerIdentity: () => undefined,
              pskCallback: () => ({ psk, identity: IDENTITY })
            })
            conn.setNoDelay(true)
            conn.once("secureConnect", () => resume(Effect.succeed(conn!)))
            conn.on("error", (cause) => resume(Effect.fail(new Socket.SocketGenericError({ reason: "Open", cause }))))
          })
      )
    }),
    // A TLS handshake with a loaded peer can take seconds; a health ping that gives up sooner
    // would mark a live runner dead and move its shards.
    { openTimeout: 10_000 }
  )

/** How `Runners` reach other runners: one TLS-PSK socket per runner, carrying the cluster's RPCs. */
export const layerClientProtocol = (
  secret: Redacted.Redacted<string>,
  written?: Written
): Layer.Layer<Runners.RpcClientProtocol, never, RpcSerialization.RpcSerialization> =>
  Layer.effect(
    Runners.RpcClientProtocol,
    Effect.gen(function* () {
      const serialization = yield* RpcSerialization.RpcSerialization
      const psk = pskOf(secret)
      return (address) =>
        Effect.flatMap(connect(psk, address.host, address.port), (socket) =>
          RpcClient.makeProtocolSocket().pipe(
            Effect.provideService(Socket.Socket, socket),
            Effect.provideService(RpcSerialization.RpcSerialization, serialization),
            Effect.map((protocol) => (written === undefined ? protocol : recordWrites(written, protocol)))
          )
        )
    })
  )

/**
 * A `SocketServer` on TLS-PSK at the runner's listen address. Only connections that complete
 * the handshake with the cluster's key reach the cluster's RPC server.
 */
export const layerSocketServer = (
  secret: Redacted.Redacted<string>
): Layer.Layer<SocketServer.SocketServer, SocketServer.SocketServerError, ShardingConfig.ShardingConfig> =>
  Layer.scoped(
    SocketServer.SocketServer,
    Effect.gen(function* () {
      const config = yield* ShardingConfig.ShardingConfig
      const listen = Option.orElse(config.runnerListenAddress, () => config.runnerAddress)
      if (Option.isNone(listen)) return yield* Effect.dieMessage("a runner needs a listen address")
      const psk = pskOf(secret)
      const runFork = Runtime.runFork(yield* Effect.runtime<never>())
      const errorDeferred = yield* Deferred.make<never, Error>()
      const pending: Array<Tls.TLSSocket> = []
      let onConnection = (conn: Tls.TLSSocket) => {
        pending.push(conn)
      }
      const server = Tls.createServer({
        ...tlsOptions,
        pskCallback: (_socket, identity) => (identity === IDENTITY ? psk : null)
      })
      server.on("secureConnection", (conn) => {
        conn.setNoDelay(true)
        onConnection(conn)
      })
      // A peer without the key: its handshake fails here and it never reaches the RPC server.
      server.on("tlsClientError", (error, socket) => {
        socket.destroy()
        runFork(
          Effect.logWarning(
            `cluster: refused a connection that did not prove the secret (${(error as { code?: string }).code ?? error.message.split("\n")[0]})`
          ).pipe(Effect.annotateLogs({ remote: socket.remoteAddress ?? "?" }))
        )
      })
      server.on("error", (cause) => Deferred.unsafeDone(errorDeferred, Exit.fail(cause)))
      yield* Effect.addFinalizer(() => Effect.async<void>((resume) => void server.close(() => resume(Effect.void))))
      yield* Effect.async<void>((resume) => {
        server.listen({ host: listen.value.host, port: listen.value.port }, () => resume(Effect.void))
      }).pipe(
        Effect.raceFirst(
          Effect.mapError(
            Deferred.await(errorDeferred),
            (cause) => new SocketServer.SocketServerError({ reason: "Open", cause })
          )
        )
      )

      const run = <R, E, _>(handler: (socket: Socket.Socket) => Effect.Effect<_, E, R>) =>
        Effect.gen(function* () {
          const scope = yield* Scope.make()
          const fiberSet = yield* FiberSet.make().pipe(Scope.extend(scope))
          const runFork = yield* FiberSet.runtime(fiberSet)<R>()
          const serve = (conn: Tls.TLSSocket) => {
            runFork(
              NodeSocket.fromDuplex(
                Effect.acquireRelease(Effect.succeed(conn), (c) =>
                  Effect.sync(() => {
                    if (!c.destroyed) c.destroySoon()
                  })
                )
              ).pipe(
                Effect.flatMap(handler),
                // A connection that breaks is that connection's end, not the server's.
                Effect.catchAllCause((cause) => Effect.logDebug("cluster: a connection ended", cause))
              )
            )
          }
          return yield* Effect.async<never>(() => {
            const previous = onConnection
            onConnection = serve
            for (const conn of pending.splice(0)) serve(conn)
            return Effect.suspend(() => {
              onConnection = previous
              return Scope.close(scope, Exit.void)
            })
          }).pipe(
            Effect.raceFirst(
              Effect.mapError(
                Deferred.await(errorDeferred),
                (cause) => new SocketServer.SocketServerError({ reason: "Unknown", cause })
              )
            )
          )
        })

      const address = server.address()
      return SocketServer.SocketServer.of({
        address:
          typeof address === "object" && address !== null
            ? { _tag: "TcpAddress", hostname: address.address, port: address.port }
            : { _tag: "UnixAddress", path: String(address) },
        run
      })
    })
  )
