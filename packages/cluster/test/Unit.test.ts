/**
 * Fast tests without Python: option resolution, the authenticated transport, and the
 * directory's session claims on a real SQLite file.
 */

import { execFileSync } from "node:child_process"
import * as Net from "node:net"
import { join } from "node:path"
import * as Tls from "node:tls"
import { fileURLToPath } from "node:url"
import { RunnerAddress, ShardingConfig } from "@effect/cluster"
import * as SocketServer from "@effect/platform/SocketServer"
import { describe, expect, it } from "@effect/vitest"
import { ClusterOptions, SnakepitCluster } from "@snakepit/cluster"
import { Processes } from "@snakepit/testkit"
import { ConfigProvider, Context, Duration, Effect, Either, Layer, Option, Redacted } from "effect"
import { Directory, layer as directoryLayer } from "../src/internal/directory.js"
import { layerSocketServer, pskOf } from "../src/internal/transport.js"
import { freePort, SECRET, tempDir } from "./helpers.js"

const withEnv = (env: Record<string, string>) =>
  Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

describe("package exports", () => {
  it("seal internal/", () => {
    const resolve = (specifier: string) =>
      execFileSync(
        process.execPath,
        [
          "--input-type=module",
          "-e",
          `try { import.meta.resolve(${JSON.stringify(specifier)}); console.log("resolved") } catch (e) { console.log(e.code) }`
        ],
        { cwd: fileURLToPath(new URL("..", import.meta.url)), encoding: "utf8" }
      ).trim()
    expect(resolve("@snakepit/cluster/internal/client.js")).toBe("ERR_PACKAGE_PATH_NOT_EXPORTED")
    expect(resolve("@snakepit/cluster")).toBe("resolved")
  })
})

describe("ClusterOptions.resolve", () => {
  it.effect("code over SNAKEPIT_CLUSTER_* over defaults", () =>
    Effect.gen(function* () {
      const resolved = yield* ClusterOptions.resolve({ port: 4000 }).pipe(
        withEnv({
          SNAKEPIT_CLUSTER_SECRET: SECRET,
          SNAKEPIT_CLUSTER_PORT: "5000",
          SNAKEPIT_CLUSTER_HOST: "10.0.0.7",
          SNAKEPIT_CLUSTER_LOCK_EXPIRATION: "20 seconds"
        })
      )
      expect(resolved).toMatchObject({ port: 4000, host: "10.0.0.7", listenHost: "10.0.0.7", shards: 300 })
      expect(Redacted.value(resolved.secret)).toBe(SECRET)
      expect(Duration.toMillis(resolved.lockExpiration)).toBe(20_000)
      expect(Duration.toMillis(ClusterOptions.failoverBound(resolved))).toBe(20_000 + 2_000 + 2_000 + 3_000)
    })
  )

  it.effect("no secret, a short secret, a bad port: ConfigError naming the key", () =>
    Effect.gen(function* () {
      const missing = yield* Effect.flip(ClusterOptions.resolve({}).pipe(withEnv({})))
      expect(missing).toMatchObject({ _tag: "ConfigError", key: "SNAKEPIT_CLUSTER_SECRET" })
      const short = yield* Effect.flip(ClusterOptions.resolve({ secret: "short" }))
      expect(short).toMatchObject({ _tag: "ConfigError", key: "secret" })
      const port = yield* Effect.flip(
        ClusterOptions.resolve({}).pipe(withEnv({ SNAKEPIT_CLUSTER_SECRET: SECRET, SNAKEPIT_CLUSTER_PORT: "70000" }))
      )
      expect(port).toMatchObject({ _tag: "ConfigError", key: "SNAKEPIT_CLUSTER_PORT", value: "70000" })
      const sqlite = yield* Effect.flip(Layer.build(SnakepitCluster.sqlite()).pipe(Effect.scoped, withEnv({})))
      expect(sqlite).toMatchObject({ _tag: "ConfigError", key: "SNAKEPIT_CLUSTER_SQLITE" })
    })
  )
})

/** Connects with TLS-PSK and `key`; resolves with whether the handshake succeeded. */
const handshake = (port: number, key: Buffer) =>
  Effect.async<boolean>((resume) => {
    const conn = Tls.connect({
      host: "127.0.0.1",
      port,
      ciphers: "ECDHE-PSK-CHACHA20-POLY1305:PSK-AES256-GCM-SHA384",
      maxVersion: "TLSv1.2",
      checkServerIdentity: () => undefined,
      pskCallback: () => ({ psk: key, identity: "snakepit-cluster" })
    })
    conn.once("secureConnect", () => {
      conn.end()
      resume(Effect.succeed(true))
    })
    conn.once("error", () => resume(Effect.succeed(false)))
  })

describe("the runner transport", () => {
  it.scopedLive("accepts only peers that prove the secret", () =>
    Effect.gen(function* () {
      const port = yield* freePort
      const address = new RunnerAddress.RunnerAddress({ host: "127.0.0.1", port })
      const server = yield* Layer.build(
        layerSocketServer(Redacted.make(SECRET)).pipe(
          Layer.provide(ShardingConfig.layer({ runnerAddress: Option.some(address) }))
        )
      ).pipe(Effect.map(Context.get(SocketServer.SocketServer)))
      let served = 0
      yield* Effect.forkScoped(server.run(() => Effect.sync(() => served++)))
      expect(yield* handshake(port, pskOf(Redacted.make("another-secret-0123456789")))).toBe(false)
      expect(served).toBe(0)
      // A plain TCP peer cannot even start: the server speaks TLS first.
      const plain = yield* Effect.async<boolean>((resume) => {
        const socket = Net.connect(port, "127.0.0.1", () => socket.write("not tls\n"))
        socket.once("close", () => resume(Effect.succeed(true)))
      })
      expect(plain).toBe(true)
      expect(served).toBe(0)
      expect(yield* handshake(port, pskOf(Redacted.make(SECRET)))).toBe(true)
      yield* Processes.awaitCondition("the authenticated peer reached the handler", () => served === 1)
    })
  )
})

describe("the directory", () => {
  it.scopedLive("a session claimed by another runner instance reports where it was, once", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const context = yield* Layer.build(
        directoryLayer.pipe(Layer.provide(SnakepitCluster.sqlite(join(dir, "cluster.db"))))
      )
      const directory = Context.get(context, Directory)
      const a = { instance: "a-1", address: "127.0.0.1:1" }
      const b = { instance: "b-1", address: "127.0.0.1:2" }
      expect(yield* directory.claimSession("s", a)).toBeUndefined()
      expect(yield* directory.claimSession("s", a)).toBeUndefined()
      expect(yield* directory.claimSession("s", b)).toEqual(a)
      expect(yield* directory.claimSession("s", b)).toBeUndefined()
      // The same address after a restart is another instance: the session's state is gone.
      expect(yield* directory.claimSession("s", { ...b, instance: "b-2" })).toEqual(b)
      expect(Either.isRight(yield* Effect.either(directory.runners(1000)))).toBe(true)
    })
  )
})
