/**
 * The pool's state transitions, without fibers or workers: plain data in, plain data out.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Option } from "effect"
import { QueueFull } from "../src/errors.js"
import { type Entry, PoolState, type StateOptions } from "../src/internal/poolState.js"

interface W {
  readonly id: string
}

const options: StateOptions = {
  pool: "p",
  capacity: 1,
  queueMax: 2,
  queueTimeoutMs: 1000,
  maxCalls: undefined,
  sessionsMax: 2
}

const deferreds = () => ({
  retire: Deferred.unsafeMake<never>(undefined as never),
  drained: Deferred.unsafeMake<void>(undefined as never),
  gone: Deferred.unsafeMake<void>(undefined as never)
})

/** Joins the queue; the test fails on QueueFull. */
const enqueued = (state: PoolState<W>, target: Entry<W> | undefined, now: number) => {
  const waiter = state.enqueue(target, now)
  if (waiter instanceof QueueFull) throw new Error("unexpected QueueFull")
  return waiter
}

const add = (state: PoolState<W>, id: string, now = 0): Entry<W> =>
  state.add({ id }, now, deferreds() as unknown as Pick<Entry<W>, "retire" | "drained" | "gone">)

/** The outcome of a deferred, if it is done. */
const outcome = <A, E>(deferred: Deferred.Deferred<A, E>): Exit.Exit<A, E> | undefined =>
  Option.getOrUndefined(Effect.runSync(Deferred.poll(deferred)).pipe(Option.map((e) => Effect.runSync(Effect.exit(e)))))

const failureTag = (exit: Exit.Exit<unknown, { readonly _tag: string }> | undefined) =>
  exit !== undefined && Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error._tag : undefined

describe("PoolState", () => {
  it("leases the idle worker released longest ago, within its capacity", () => {
    const state = new PoolState<W>(options)
    const a = add(state, "a")
    const b = add(state, "b")
    expect(state.takeIdle()).toBe(a)
    expect(state.takeIdle()).toBe(b)
    expect(state.takeIdle()).toBeUndefined()
    state.release(a, 5)
    expect(a.calls).toBe(1)
    expect(a.idleSince).toBe(5)
    expect(state.occupancy()).toEqual({ ready: 2, busy: 1 })
    expect(state.takeIdle()).toBe(a)
  })

  it("hands a released worker to the first waiter that accepts it; QueueFull beyond queueMax", () => {
    const state = new PoolState<W>(options)
    const a = add(state, "a")
    const b = add(state, "b")
    state.takeIdle()
    state.takeIdle()
    const forB = enqueued(state, b, 1)
    const forAny = enqueued(state, undefined, 2)
    expect(state.enqueue(undefined, 3)).toMatchObject({ _tag: "QueueFull", max: 2 })
    state.release(a, 4)
    // The waiter for b is skipped: a goes to the waiter for any worker.
    expect(outcome(forAny.deferred)).toEqual(Exit.succeed(a))
    expect(forAny.handed).toBe(a)
    expect(outcome(forB.deferred)).toBeUndefined()
    state.release(b, 5)
    expect(outcome(forB.deferred)).toEqual(Exit.succeed(b))
    expect(state.waiters).toEqual([])
  })

  it("a waiter that gives up leaves the queue and returns what it was handed in the same instant", () => {
    const state = new PoolState<W>(options)
    const a = add(state, "a")
    state.takeIdle()
    const waiter = enqueued(state, undefined, 0)
    expect(state.abandon(waiter)).toBeUndefined()
    expect(state.waiters).toEqual([])
    const second = enqueued(state, undefined, 0)
    state.release(a, 1)
    expect(state.abandon(second)).toBe(a)
  })

  it("expires waiters whose deadline passed, in order, with QueueTimeout", () => {
    const state = new PoolState<W>(options)
    const first = enqueued(state, undefined, 0)
    const second = enqueued(state, undefined, 500)
    expect(state.expireWaiters(999)).toBe(0)
    expect(state.expireWaiters(1000)).toBe(1)
    expect(failureTag(outcome(first.deferred))).toBe("QueueTimeout")
    expect(outcome(second.deferred)).toBeUndefined()
  })

  it("retiring a worker fails its targeted waiters, loses its sessions, and drains once idle", () => {
    const state = new PoolState<W>(options)
    const a = add(state, "a")
    state.bind("s", a, 0)
    state.takeIdle()
    const waiter = enqueued(state, a, 0)
    state.retire(a, { _tag: "Restart" })
    expect(failureTag(outcome(waiter.deferred))).toBe("SessionWorkerUnavailable")
    expect(outcome(a.retire)).toEqual(Exit.succeed({ _tag: "Restart" }))
    expect(outcome(a.drained)).toBeUndefined() // a call is still running
    expect(state.takeIdle()).toBeUndefined()
    expect(state.occupancy()).toEqual({ ready: 0, busy: 0 })
    state.release(a, 1)
    expect(outcome(a.drained)).toEqual(Exit.void)
    // The session learns it once (LESSONS #14), then is unbound.
    expect(state.lookupSession("s", 2)).toEqual({ _tag: "Lost", workerId: "a", reason: "restarted" })
    expect(state.lookupSession("s", 3)).toEqual({ _tag: "Unbound" })
    state.remove(a)
    expect(state.get("a")).toBeUndefined()
  })

  it("recycles a worker after maxCalls", () => {
    const state = new PoolState<W>({ ...options, maxCalls: 2 })
    const a = add(state, "a")
    state.takeIdle()
    state.release(a, 1)
    expect(a.retiring).toBeUndefined()
    state.takeIdle()
    state.release(a, 2)
    expect(a.retiring).toEqual({ _tag: "Recycle", why: "maxCalls" })
    expect(outcome(a.drained)).toEqual(Exit.void)
  })

  it("sessions: least recently used evicted beyond sessionsMax, expired after the TTL", () => {
    const state = new PoolState<W>(options)
    const a = add(state, "a")
    expect(state.bind("s1", a, 0)).toEqual([])
    expect(state.bind("s2", a, 1)).toEqual([])
    expect(state.lookupSession("s1", 2)).toEqual({ _tag: "Bound", entry: a }) // s1 now most recent
    const evicted = state.bind("s3", a, 3)
    expect(evicted.map(([session]) => session)).toEqual(["s2"])
    expect(state.expireSessions(11, 9).map(([session]) => session)).toEqual(["s1"])
    expect([...state.sessions.keys()]).toEqual(["s3"])
  })

  it("closing fails every waiter with PoolClosed", () => {
    const state = new PoolState<W>(options)
    const waiter = enqueued(state, undefined, 0)
    state.close()
    expect(failureTag(outcome(waiter.deferred))).toBe("PoolClosed")
    expect(state.closed).toBe(true)
  })

  it("drain: queued callers and new calls are refused with PoolDraining; drained once nothing runs", () => {
    const state = new PoolState<W>(options)
    const a = add(state, "a")
    state.takeIdle()
    const waiter = enqueued(state, undefined, 0)
    state.drain()
    expect(failureTag(outcome(waiter.deferred))).toBe("PoolDraining")
    expect(state.refusal()?._tag).toBe("PoolDraining")
    expect(outcome(state.drained)).toBeUndefined()
    state.release(a, 1)
    expect(outcome(state.drained)).toEqual(Exit.void)
    state.close()
    expect(state.refusal()?._tag).toBe("PoolClosed")
  })

  it("elastic: idle workers longest idle first, never a live session's home; shrink order idle, home, busy", () => {
    const state = new PoolState<W>(options)
    const a = add(state, "a", 0)
    add(state, "b", 5)
    const c = add(state, "c", 1)
    state.bind("s", c, 2)
    expect(state.idleWorkers().map((e) => e.worker.id)).toEqual(["a", "b"])
    state.tryTake(a)
    expect(state.idleWorkers().map((e) => e.worker.id)).toEqual(["b"])
    expect(state.shrinkOrder().map((e) => e.worker.id)).toEqual(["b", "c", "a"])
    // Once the session's worker is lost, it is no longer a home.
    state.retire(c, { _tag: "Stop" })
    expect(state.isSessionHome(c)).toBe(false)
    expect(state.shrinkOrder().map((e) => e.worker.id)).toEqual(["b", "a"])
  })

  it("elastic: how long callers for any worker have waited", () => {
    const state = new PoolState<W>(options)
    const a = add(state, "a")
    state.takeIdle()
    enqueued(state, a, 0) // a session's caller: waiting for a, not for capacity
    enqueued(state, undefined, 10)
    expect(state.waitingSince(9)).toBe(0)
    expect(state.firstWaitAfter(9)).toBe(10)
    expect(state.waitingSince(10)).toBe(1)
    expect(state.firstWaitAfter(10)).toBeUndefined()
  })
})
