/**
 * The cluster on PostgreSQL storage (the one for several machines), on a throwaway local
 * server: two runners, sessions on both, kill -9 of one, its sessions move with the signal
 * once. Skipped, saying so, where no PostgreSQL server binaries are installed.
 */
import { describe, expect, it } from "@effect/vitest"
import { Snakepit } from "@snakepit/core"
import { Processes } from "@snakepit/testkit"
import { Duration, Effect } from "effect"
import {
  awaitSettled,
  clientLayerPostgres,
  freePort,
  postgresBin,
  startPostgres,
  startRunner,
  tempDir,
  untilServed
} from "./helpers.js"

if (postgresBin === undefined)
  console.warn("[cluster] PostgreSQL server binaries not installed: the PostgreSQL test is skipped")

describe.skipIf(postgresBin === undefined)("the cluster on PostgreSQL", () => {
  it.scopedLive(
    "two runners on PostgreSQL: sessions stick, and move once when their runner is killed",
    () =>
      Effect.gen(function* () {
        const { url } = yield* startPostgres
        const dir = yield* tempDir
        const runners = yield* Effect.all(
          [
            startRunner({ dir, port: yield* freePort, postgres: url }),
            startRunner({ dir, port: yield* freePort, postgres: url })
          ],
          { concurrency: "unbounded" }
        )
        yield* Effect.gen(function* () {
          yield* awaitSettled(2)
          const snakepit = yield* Snakepit
          const sessions = Array.from({ length: 20 }, (_, i) => `pg-${i}`)
          const pidOf = new Map<string, number>()
          for (const session of sessions) {
            yield* snakepit.execute("session_put", { key: "k", value: session }, { session })
            const { pid } = (yield* snakepit.execute("ping", {}, { session })) as { pid: number }
            const again = (yield* snakepit.execute("ping", {}, { session })) as { pid: number }
            expect(again.pid).toBe(pid)
            pidOf.set(session, pid)
          }
          const victim = runners[0]!
          const moving = sessions.filter((s) => victim.workers.includes(pidOf.get(s)!))
          expect(moving.length).toBeGreaterThan(0)
          expect(moving.length).toBeLessThan(sessions.length)
          victim.child.kill("SIGKILL")
          yield* Processes.awaitGone([victim.pid, ...victim.workers], Duration.seconds(5))
          for (const session of sessions) {
            const served = yield* untilServed(
              snakepit.execute("session_get", { key: "k" }, { session }),
              Duration.seconds(40)
            )
            if (moving.includes(session)) {
              expect(served.moved).toBe(1)
              expect(served.unreachable).toBeLessThanOrEqual(1)
              expect(served.value).toBeNull()
            } else {
              expect(served).toEqual({ value: session, moved: 0, unreachable: 0 })
            }
          }
        }).pipe(Effect.provide(clientLayerPostgres(url)))
      }),
    240_000
  )
})
