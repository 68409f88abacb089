/**
 * Three runner processes on loopback, each with a pool of two real Python workers, and the
 * test process as a client: sessions spread over the runners and stick to one worker, and
 * a stream through the cluster keeps back-pressure.
 */
import { describe, expect, it } from "@effect/vitest"
import { Snakepit } from "@snakepit/core"
import { Effect, Stream } from "effect"
import { awaitSettled, clientLayer, freePort, startRunner, tempDir } from "./helpers.js"

const startThree = Effect.gen(function* () {
  const dir = yield* tempDir
  const ports = [yield* freePort, yield* freePort, yield* freePort]
  const runners = yield* Effect.all(
    ports.map((port) => startRunner({ dir, port })),
    { concurrency: "unbounded" }
  )
  return { dir, runners }
})

describe("a cluster of three runners", () => {
  it.scopedLive(
    "60 sessions spread over all three runners, each always on the same worker",
    () =>
      Effect.gen(function* () {
        const { dir, runners } = yield* startThree
        yield* Effect.gen(function* () {
          yield* awaitSettled(3)
          const snakepit = yield* Snakepit
          const sessions = Array.from({ length: 60 }, (_, i) => `session-${i}`)
          const pidsOf = yield* Effect.forEach(
            sessions,
            (session) =>
              Effect.gen(function* () {
                const pids: Array<number> = []
                yield* snakepit.execute("session_put", { key: "owner", value: session }, { session })
                for (let i = 0; i < 4; i++) {
                  const { pid } = (yield* snakepit.execute("ping", {}, { session })) as { pid: number }
                  pids.push(pid)
                }
                const owner = yield* snakepit.execute("session_get", { key: "owner" }, { session })
                expect(owner).toBe(session)
                return pids
              }),
            { concurrency: 12 }
          )
          for (const pids of pidsOf) expect(new Set(pids).size).toBe(1)
          const runnerOfPid = new Map(runners.flatMap((r) => r.workers.map((pid) => [pid, r.address] as const)))
          const perRunner = new Map<string, number>()
          for (const pids of pidsOf) {
            const runner = runnerOfPid.get(pids[0]!)
            expect(runner).toBeDefined()
            perRunner.set(runner!, (perRunner.get(runner!) ?? 0) + 1)
          }
          console.log(`[cluster] sessions per runner: ${JSON.stringify(Object.fromEntries(perRunner))}`)
          expect(perRunner.size).toBe(3)
          const stats = yield* snakepit.stats()
          expect(stats).toMatchObject({ size: 6, ready: 6 })
          expect((yield* snakepit.workers()).length).toBe(6)
        }).pipe(Effect.provide(clientLayer(dir)))
      }),
    180_000
  )

  it.scopedLive(
    "a stream through the cluster with a slow consumer stays bounded",
    () =>
      Effect.gen(function* () {
        const { dir } = yield* startThree
        yield* Effect.gen(function* () {
          yield* awaitSettled(3)
          const snakepit = yield* Snakepit
          const session = "stream-session"
          let consumed = 0
          const started = Date.now()
          yield* snakepit.executeStream("flood", { count: 200_000, size: 1024 }, { session, buffer: 16 }).pipe(
            Stream.take(2_000),
            Stream.runForEach(() => Effect.sync(() => consumed++).pipe(Effect.zipRight(Effect.sleep("1 millis"))))
          )
          const report = (yield* snakepit.execute("flood_report", {}, { session })) as {
            produced: number
            closed: boolean
          }
          const ahead = report.produced - consumed
          console.log(
            `[cluster back-pressure] consumed ${consumed} in ${Date.now() - started} ms, produced ${report.produced} (ahead ${ahead})`
          )
          expect(consumed).toBe(2_000)
          // Without back-pressure the producer would be ~198 000 chunks ahead.
          expect(ahead).toBeLessThan(1_000)
        }).pipe(Effect.provide(clientLayer(dir)))
      }),
    180_000
  )
})
