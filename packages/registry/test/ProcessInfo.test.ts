import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { installExitHook, killGroups, ProcessInfo } from "../src/index.js"
import { awaitGone, deadOwner, newRunId, spawnPythonOf, spawnUnrelated } from "./helpers.js"

describe("ProcessInfo", () => {
  it("carriesRunId matches whole arguments only", () => {
    const id = "rabcdefgh-0123abcd"
    expect(ProcessInfo.carriesRunId(`python -m x --snakepit-run-id ${id} --port 0`, id)).toBe(true)
    expect(ProcessInfo.carriesRunId(`python -m x --snakepit-run-id=${id}`, id)).toBe(true)
    expect(ProcessInfo.carriesRunId(`python -m x --snakepit-run-id ${id}9`, id)).toBe(false)
    expect(ProcessInfo.carriesRunId(`python -m x --snakepit-run-id x${id}`, id)).toBe(false)
    expect(ProcessInfo.carriesRunId(`python -m x ${id}`, id)).toBe(false)
    expect(ProcessInfo.carriesRunId("python --snakepit-run-id  ", "")).toBe(false)
    expect(ProcessInfo.carriesRunId("python --snakepit-run-id a.b", "a*b")).toBe(false)
  })

  it.scopedLive("reads start time, command line and group of real processes", () =>
    Effect.gen(function* () {
      const mine = ProcessInfo.startTime(process.pid)
      expect(mine).toBeDefined()
      expect(ProcessInfo.startTime(process.pid)).toBe(mine)
      expect(ProcessInfo.isOwnerAlive(process.pid, mine!)).toBe(true)
      expect(ProcessInfo.isOwnerAlive(process.pid, `${mine}0`)).toBe(false)

      const runId = newRunId()
      const worker = yield* spawnPythonOf(runId)
      expect(ProcessInfo.commandLine(worker.pid)).toContain(`--snakepit-run-id ${runId}`)
      expect(ProcessInfo.processGroup(worker.pid)).toBe(worker.pid) // detached: its own group
      expect(ProcessInfo.processesOfRun(runId)).toEqual([worker.pid])

      const owner = yield* deadOwner
      expect(ProcessInfo.isAlive(owner.pid)).toBe(false)
      expect(ProcessInfo.isOwnerAlive(owner.pid, owner.startTime)).toBe(false)
      expect(ProcessInfo.commandLine(owner.pid)).toBeUndefined()
    })
  )
})

describe("exit hook", () => {
  it.scopedLive("kills the groups still registered at exit and counts them", () =>
    Effect.gen(function* () {
      const still = yield* spawnUnrelated()
      const results: Array<ReadonlyArray<number>> = []
      const before = process.listeners("exit")
      const uninstall = installExitHook(
        () => [still.pid, 999_999_9],
        (result) => results.push(result.killed)
      )
      const listener = process.listeners("exit").find((l) => !before.includes(l))!
      expect(listener).toBeDefined()
      // run the listener as the exit would, without exiting the test process
      const write = process.stderr.write
      process.stderr.write = (() => true) as typeof process.stderr.write
      try {
        ;(listener as () => void)()
      } finally {
        process.stderr.write = write
      }
      uninstall()
      expect(process.listeners("exit")).not.toContain(listener)
      expect(results).toEqual([[still.pid]])
      yield* awaitGone([still.pid])
      expect(killGroups([still.pid]).killed).toEqual([]) // nothing left: expected zero
    })
  )
})
