/**
 * The state of one pool as plain data with named transitions: live workers and their leases,
 * the FIFO of waiting callers, session bindings. Every transition is synchronous and runs to
 * completion, so calling one from an `Effect.sync` block makes it atomic with respect to every
 * other fiber (docs/adr/0002). Nothing here starts a fiber or reads a clock: times are passed
 * in, waiters are resumed with `Deferred.unsafeDone`, so the transitions are tested without a
 * runtime (packages/core/test/poolState.test.ts).
 *
 * @internal
 */
import { Deferred, Exit, FiberId } from "effect"
import { PoolClosed, PoolDraining, QueueFull, QueueTimeout, SessionWorkerUnavailable } from "../errors.js"

/** What the state needs of a worker: its id. The pool stores its `PoolWorker` here. */
export interface WorkerLike {
  readonly id: string
}

/** Why a worker leaves the pool. */
export type RetireReason =
  | { readonly _tag: "Crashed"; readonly code: number | null; readonly signal: string | null }
  | { readonly _tag: "Unhealthy"; readonly detail: string }
  | { readonly _tag: "Recycle"; readonly why: "maxCalls" | "ttl" | "rss" }
  | { readonly _tag: "Restart" }
  | { readonly _tag: "Stop" }
  /** Elastic pools: idle longer than `idleTimeout`, or fewer workers wanted (`resize`). */
  | { readonly _tag: "ScaleDown"; readonly why: "idle" | "resize" }

/** A reason as log lines and events show it. */
export const describeReason = (reason: RetireReason): string => {
  switch (reason._tag) {
    case "Crashed":
      return reason.signal ? `crashed (${reason.signal})` : `crashed (exit ${reason.code})`
    case "Unhealthy":
      return `unhealthy: ${reason.detail}`
    case "Recycle":
      return `recycled (${reason.why})`
    case "Restart":
      return "restarted"
    case "Stop":
      return "stopped"
    case "ScaleDown":
      return reason.why === "idle" ? "retired (idle)" : "retired (resize)"
  }
}

/** Graceful reasons let the calls in flight finish; the others end a worker that cannot serve. */
export const isGraceful = (reason: RetireReason): boolean => reason._tag !== "Crashed" && reason._tag !== "Unhealthy"

/** A live worker of the pool. Never leaves the pool's internal modules. */
export interface Entry<W extends WorkerLike> {
  readonly worker: W
  /** Calls it serves now. */
  inUse: number
  /** Calls it completed. */
  calls: number
  /** Order of the last release: the idle worker released longest ago is served first. */
  releasedAt: number
  /** Clock millis at which it became ready. */
  readonly readyAt: number
  /** Clock millis since when it serves nothing (meaningful while `inUse` is 0). */
  idleSince: number
  /** The tools it runs now, one per call in flight. */
  readonly running: Array<string>
  /** Resident memory of the process at the last health check, when known. */
  rssBytes: number | undefined
  retiring: RetireReason | undefined
  /** Completes with the reason as soon as the worker starts retiring. */
  readonly retire: Deferred.Deferred<RetireReason>
  /** Completes once a retiring worker serves no call. */
  readonly drained: Deferred.Deferred<void>
  /** Completes once the worker's scope is closed: its process is gone. */
  readonly gone: Deferred.Deferred<void>
}

/** Why a wait ends without a worker. */
export type WaitError = SessionWorkerUnavailable | PoolClosed | PoolDraining | QueueTimeout

/** A caller waiting for a worker. */
export interface Waiter<W extends WorkerLike> {
  /** A specific worker (strict session affinity), or any. */
  readonly target: Entry<W> | undefined
  readonly deferred: Deferred.Deferred<Entry<W>, WaitError>
  /** Clock millis at which it joined the queue. */
  readonly since: number
  /** Clock millis at which the wait fails with `QueueTimeout`. */
  readonly deadline: number
  /** The worker it was given, set in the same transition that resumes it. */
  handed: Entry<W> | undefined
}

/** A session's worker. */
export interface Binding<W extends WorkerLike> {
  readonly entry: Entry<W>
  lastUsed: number
  /** Why the bound worker left; the next call reports it (strict) or rebinds (hint). */
  lost: string | undefined
}

/** What a session lookup found. */
export type SessionLookup<W extends WorkerLike> =
  | { readonly _tag: "Unbound" }
  /** Its worker left since the last call: the binding is dropped now (LESSONS #14). */
  | { readonly _tag: "Lost"; readonly workerId: string; readonly reason: string }
  | { readonly _tag: "Bound"; readonly entry: Entry<W> }

/** Settings the transitions depend on. */
export interface StateOptions {
  readonly pool: string
  /** Calls one worker serves at once. */
  readonly capacity: number
  /** Callers allowed to wait. */
  readonly queueMax: number
  /** `QueueTimeout.timeoutMs` of expired waiters. */
  readonly queueTimeoutMs: number
  /** Recycle a worker after this many calls. */
  readonly maxCalls: number | undefined
  /** Sessions kept; the least recently used is dropped beyond it. */
  readonly sessionsMax: number
}

/** The state of one pool. */
export class PoolState<W extends WorkerLike> {
  readonly entries = new Map<string, Entry<W>>()
  readonly waiters: Array<Waiter<W>> = []
  /** Most recently used last: the first key is the one to evict. */
  readonly sessions = new Map<string, Binding<W>>()
  readonly counters = { requests: 0, errors: 0, queueTimeouts: 0, restarts: 0 }
  closed = false
  draining = false
  /** Completes once a draining pool has no call in flight. */
  readonly drained: Deferred.Deferred<void> = Deferred.unsafeMake<void>(FiberId.none)
  private releaseSeq = 0

  constructor(readonly options: StateOptions) {}

  /** Workers able to serve, and those of them serving a call. */
  occupancy(): { readonly ready: number; readonly busy: number } {
    let ready = 0
    let busy = 0
    for (const entry of this.entries.values()) {
      if (entry.retiring !== undefined) continue
      ready++
      if (entry.inUse > 0) busy++
    }
    return { ready, busy }
  }

  /** Calls in flight on every worker, retiring ones included. */
  inFlight(): number {
    let n = 0
    for (const entry of this.entries.values()) n += entry.inUse
    return n
  }

  /** Adds a worker that is ready, and gives it to the waiters that accept it. */
  add(worker: W, now: number, deferreds: Pick<Entry<W>, "retire" | "drained" | "gone">): Entry<W> {
    const entry: Entry<W> = {
      worker,
      inUse: 0,
      calls: 0,
      releasedAt: ++this.releaseSeq,
      readyAt: now,
      idleSince: now,
      running: [],
      rssBytes: undefined,
      retiring: undefined,
      ...deferreds
    }
    this.entries.set(worker.id, entry)
    this.handOff(entry)
    return entry
  }

  /** A live worker by id (a retiring one included), if any. */
  get(workerId: string): Entry<W> | undefined {
    return this.entries.get(workerId)
  }

  /** Removes a worker whose process is gone. */
  remove(entry: Entry<W>): void {
    if (this.entries.get(entry.worker.id) === entry) this.entries.delete(entry.worker.id)
  }

  /** Takes one unit of `entry`'s capacity, unless it is retiring or full. */
  tryTake(entry: Entry<W>): boolean {
    if (entry.retiring !== undefined || entry.inUse >= this.options.capacity) return false
    entry.inUse++
    return true
  }

  /** Takes the idle worker released longest ago (or any with free capacity), if any. */
  takeIdle(): Entry<W> | undefined {
    let best: Entry<W> | undefined
    for (const entry of this.entries.values()) {
      if (entry.retiring !== undefined || entry.inUse >= this.options.capacity) continue
      if (best === undefined || entry.releasedAt < best.releasedAt) best = entry
    }
    if (best) best.inUse++
    return best
  }

  /** Gives free capacity of `entry` to the first waiters that accept it, in arrival order. */
  handOff(entry: Entry<W>): void {
    const waiters = this.waiters
    for (let i = 0; i < waiters.length && entry.inUse < this.options.capacity; ) {
      const waiter = waiters[i]!
      if (waiter.target !== undefined && waiter.target !== entry) {
        i++
        continue
      }
      waiters.splice(i, 1)
      entry.inUse++
      waiter.handed = entry
      Deferred.unsafeDone(waiter.deferred, Exit.succeed(entry))
    }
  }

  /**
   * Joins the queue (for `target`, or any worker), or `QueueFull` when `queueMax` wait already.
   * The caller awaits `waiter.deferred`.
   */
  enqueue(target: Entry<W> | undefined, now: number): Waiter<W> | QueueFull {
    if (this.waiters.length >= this.options.queueMax) {
      return new QueueFull({ pool: this.options.pool, max: this.options.queueMax })
    }
    const waiter: Waiter<W> = {
      target,
      deferred: Deferred.unsafeMake<Entry<W>, WaitError>(FiberId.none),
      since: now,
      deadline: now + this.options.queueTimeoutMs,
      handed: undefined
    }
    this.waiters.push(waiter)
    return waiter
  }

  /**
   * A waiter gave up (interrupted, or failed): leaves the queue. Returns the worker it was
   * handed in the same instant, which the caller must release, never leak.
   */
  abandon(waiter: Waiter<W>): Entry<W> | undefined {
    const index = this.waiters.indexOf(waiter)
    if (index >= 0) this.waiters.splice(index, 1)
    return waiter.handed
  }

  /**
   * Fails the waiters whose deadline is past with `QueueTimeout`. Waiters join at the back with
   * the same timeout, so deadlines never decrease along the queue. Returns how many expired.
   */
  expireWaiters(now: number): number {
    let expired = 0
    while (this.waiters.length > 0 && this.waiters[0]!.deadline <= now) {
      const waiter = this.waiters.shift()!
      Deferred.unsafeDone(
        waiter.deferred,
        Exit.fail(new QueueTimeout({ pool: this.options.pool, timeoutMs: this.options.queueTimeoutMs }))
      )
      expired++
    }
    return expired
  }

  /** Marks a worker as leaving: no new leases, targeted waiters fail, sessions learn it at once. */
  retire(entry: Entry<W>, reason: RetireReason): void {
    if (entry.retiring !== undefined) return
    entry.retiring = reason
    const why = describeReason(reason)
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const waiter = this.waiters[i]!
      if (waiter.target !== entry) continue
      this.waiters.splice(i, 1)
      Deferred.unsafeDone(
        waiter.deferred,
        Exit.fail(new SessionWorkerUnavailable({ session: "", workerId: entry.worker.id, reason: why }))
      )
    }
    for (const binding of this.sessions.values()) if (binding.entry === entry) binding.lost = why
    Deferred.unsafeDone(entry.retire, Exit.succeed(reason))
    if (entry.inUse === 0) Deferred.unsafeDone(entry.drained, Exit.void)
  }

  /**
   * A call on `entry` ended: counts it, recycles the worker after `maxCalls`, and gives the
   * freed capacity to the next waiter (or completes the drain of a retiring worker).
   */
  release(entry: Entry<W>, now: number): void {
    entry.inUse--
    entry.calls++
    entry.releasedAt = ++this.releaseSeq
    if (entry.inUse === 0) entry.idleSince = now
    const maxCalls = this.options.maxCalls
    if (maxCalls !== undefined && entry.calls >= maxCalls) this.retire(entry, { _tag: "Recycle", why: "maxCalls" })
    if (entry.retiring === undefined) this.handOff(entry)
    else if (entry.inUse === 0) Deferred.unsafeDone(entry.drained, Exit.void)
    if (this.draining && entry.inUse === 0 && this.inFlight() === 0) Deferred.unsafeDone(this.drained, Exit.void)
  }

  /** Why a new call is refused now, if it is. */
  refusal(): PoolClosed | PoolDraining | undefined {
    if (this.closed) return new PoolClosed({ pool: this.options.pool })
    if (this.draining) return new PoolDraining({ pool: this.options.pool })
    return undefined
  }

  /**
   * Stops taking calls: the queued callers fail with `PoolDraining`, the calls in flight go on,
   * and `drained` completes once none is left.
   */
  drain(): void {
    if (this.draining) return
    this.draining = true
    const draining = Exit.fail(new PoolDraining({ pool: this.options.pool }))
    for (const waiter of this.waiters.splice(0)) Deferred.unsafeDone(waiter.deferred, draining)
    if (this.inFlight() === 0) Deferred.unsafeDone(this.drained, Exit.void)
  }

  /** The pool is closing: every waiter fails with `PoolClosed`. */
  close(): void {
    this.closed = true
    const closed = Exit.fail(new PoolClosed({ pool: this.options.pool }))
    for (const waiter of this.waiters.splice(0)) Deferred.unsafeDone(waiter.deferred, closed)
  }

  // ---- sessions ------------------------------------------------------------------------

  /** The session's worker, marking it most recently used; a lost binding is dropped. */
  lookupSession(session: string, now: number): SessionLookup<W> {
    const binding = this.sessions.get(session)
    if (binding === undefined) return { _tag: "Unbound" }
    this.sessions.delete(session)
    if (binding.lost !== undefined) return { _tag: "Lost", workerId: binding.entry.worker.id, reason: binding.lost }
    this.sessions.set(session, binding)
    binding.lastUsed = now
    return { _tag: "Bound", entry: binding.entry }
  }

  /** Binds `session` to `entry`; returns the bindings evicted beyond `sessionsMax`, oldest first. */
  bind(session: string, entry: Entry<W>, now: number): ReadonlyArray<readonly [string, Binding<W>]> {
    this.sessions.delete(session)
    this.sessions.set(session, { entry, lastUsed: now, lost: undefined })
    const evicted: Array<readonly [string, Binding<W>]> = []
    while (this.sessions.size > this.options.sessionsMax) {
      const oldest = this.sessions.entries().next().value as [string, Binding<W>]
      this.sessions.delete(oldest[0])
      evicted.push(oldest)
    }
    return evicted
  }

  /** Drops the sessions unused for `ttlMs`; returns them. */
  expireSessions(now: number, ttlMs: number): ReadonlyArray<readonly [string, Binding<W>]> {
    const expired: Array<readonly [string, Binding<W>]> = []
    for (const [session, binding] of this.sessions) {
      if (now - binding.lastUsed < ttlMs) continue
      this.sessions.delete(session)
      expired.push([session, binding])
    }
    return expired
  }

  /** True while a live session is bound to `entry`: an idle pool must not retire it. */
  isSessionHome(entry: Entry<W>): boolean {
    for (const binding of this.sessions.values()) if (binding.entry === entry && binding.lost === undefined) return true
    return false
  }

  // ---- elasticity ----------------------------------------------------------------------

  /** When the first caller for any worker that joined after `cutoff` joined, if one did. */
  firstWaitAfter(cutoff: number): number | undefined {
    for (const waiter of this.waiters) if (waiter.target === undefined && waiter.since > cutoff) return waiter.since
    return undefined
  }

  /** Waiters for any worker that joined the queue at or before `cutoff`. */
  waitingSince(cutoff: number): number {
    let n = 0
    for (const waiter of this.waiters) if (waiter.target === undefined && waiter.since <= cutoff) n++
    return n
  }

  /**
   * Idle workers an elastic pool may retire, the longest idle first: serving nothing, not
   * retiring, and no live session's home.
   */
  idleWorkers(): ReadonlyArray<Entry<W>> {
    const idle: Array<Entry<W>> = []
    for (const entry of this.entries.values()) {
      if (entry.retiring !== undefined || entry.inUse > 0 || this.isSessionHome(entry)) continue
      idle.push(entry)
    }
    return idle.sort((a, b) => a.idleSince - b.idleSince)
  }

  /**
   * The order in which to give up live workers when the pool must shrink: idle ones first
   * (the longest idle first), then session homes, then the busy ones (which finish their calls).
   */
  shrinkOrder(): ReadonlyArray<Entry<W>> {
    const rank = (entry: Entry<W>) => (entry.inUse > 0 ? 2 : this.isSessionHome(entry) ? 1 : 0)
    return [...this.entries.values()]
      .filter((entry) => entry.retiring === undefined)
      .sort((a, b) => rank(a) - rank(b) || a.idleSince - b.idleSince)
  }
}
