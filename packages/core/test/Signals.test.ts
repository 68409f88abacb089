/**
 * createPool and SIGTERM/SIGINT, with a real HTTP service in a child process: an application
 * that handles the signal itself drains first and closes the pool last, and every in-flight
 * request is answered; without one, the signal closes the pool and ends the process. No worker
 * is left either way.
 */
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { Processes } from "@snakepit/testkit"
import { Duration, Effect } from "effect"
import { createPool } from "../src/index.js"

const httpHost = fileURLToPath(new URL("./fixtures/hosts/http-host.mjs", import.meta.url))

interface Serving {
  readonly runId: string
  readonly port: number
  readonly workers: ReadonlyArray<number>
  /** How many listeners the signal has once the pool serves. */
  readonly listeners: number
}

/** Starts the HTTP service (killed when the scope closes) and waits until it serves. */
const startService = (options: {
  readonly signal: "SIGTERM" | "SIGINT"
  readonly handler: "before" | "after" | "prepended" | "none"
  readonly handleSignals?: boolean
}) =>
  Effect.gen(function* () {
    const dataDir = mkdtempSync(join(tmpdir(), "snakepit-signals-"))
    const host = yield* Processes.spawnHost(httpHost, [JSON.stringify({ ...options, dataDir, size: 2 })])
    const serving = yield* host.nextJson<Serving>(Duration.seconds(60))
    return { host, ...serving }
  })

/** Sends `count` requests, each one `sleep` call of `ms`; resolves with every answer (or the failure). */
const request = (port: number, ms: number) =>
  Effect.promise(() =>
    fetch(`http://127.0.0.1:${port}/?ms=${ms}`).then(
      async (response) => ({ status: response.status, body: (await response.json()) as unknown }),
      (error: unknown) => ({ status: 0, body: String(error) })
    )
  )

/** Waits until the service has accepted `count` requests. */
const awaitAccepted = (host: Processes.HostProcess, count: number) =>
  Effect.gen(function* () {
    for (;;) {
      const line = yield* host.nextJson<{ accepted?: number }>()
      if ((line.accepted ?? 0) >= count) return
    }
  })

describe("createPool and signals (a real HTTP service)", () => {
  for (const [signal, handler] of [
    ["SIGTERM", "after"],
    ["SIGINT", "before"],
    ["SIGTERM", "prepended"]
  ] as const) {
    it.scopedLive(
      `an application handler for ${signal} (${handler === "prepended" ? "prepended once after" : `added ${handler}`} createPool) drains first: every in-flight request is answered`,
      () =>
        Effect.gen(function* () {
          const service = yield* startService({ signal, handler })
          // Three requests on two workers: two run, one waits in the queue.
          const answers = yield* Effect.fork(
            Effect.all([request(service.port, 1500), request(service.port, 1500), request(service.port, 1500)], {
              concurrency: "unbounded"
            })
          )
          yield* awaitAccepted(service.host, 3)
          service.host.child.kill(signal)
          expect(yield* service.host.nextJson()).toEqual({ draining: 3 })
          const replies = yield* answers.await.pipe(Effect.flatten)
          expect(replies).toEqual(Array(3).fill({ status: 200, body: { ok: true, result: { slept_ms: 1500 } } }))
          expect(yield* service.host.nextJson()).toEqual({ drained: true })
          // It ended on its own, and its own exit handler ran.
          expect(yield* service.host.nextJson()).toEqual({ exitHandler: true })
          expect(yield* service.host.exited()).toEqual({ code: 0, signal: null })
          yield* Processes.awaitGone(service.workers, Duration.seconds(5))
          yield* Processes.awaitRunGone(service.runId, Duration.seconds(5))
        })
    )
  }

  it.scopedLive("with no application handler, SIGTERM closes the pool and ends the process by the signal", () =>
    Effect.gen(function* () {
      const service = yield* startService({ signal: "SIGTERM", handler: "none" })
      expect(service.listeners).toBe(1) // createPool's own
      service.host.child.kill("SIGTERM")
      expect(yield* service.host.exited()).toEqual({ code: null, signal: "SIGTERM" })
      // Closed before the signal ended it: the workers were stopped, not left to their death watch.
      expect(service.workers.filter(Processes.isAlive)).toEqual([])
      yield* Processes.awaitRunGone(service.runId, Duration.seconds(5))
    })
  )

  it.scopedLive("handleSignals: false adds no handler: SIGTERM ends the process at once, and no worker survives", () =>
    Effect.gen(function* () {
      const service = yield* startService({ signal: "SIGTERM", handler: "none", handleSignals: false })
      expect(service.listeners).toBe(0)
      service.host.child.kill("SIGTERM")
      expect(yield* service.host.exited()).toEqual({ code: null, signal: "SIGTERM" })
      // Nothing closed the pool: the workers follow their host through their parent-death watch.
      yield* Processes.awaitGone(service.workers, Duration.seconds(5))
      yield* Processes.awaitRunGone(service.runId, Duration.seconds(5))
    })
  )

  it.live("handleSignals that is not a boolean is a ConfigError naming it, before anything starts", () =>
    Effect.promise(async () => {
      const error = await createPool({ handleSignals: "no" as unknown as boolean }).then(
        async (pool) => {
          await pool.close() // a pool must not outlive a failing test
          return pool
        },
        (e: unknown) => e
      )
      expect(error).toMatchObject({ _tag: "ConfigError", key: "handleSignals", value: "no" })
    })
  )
})
