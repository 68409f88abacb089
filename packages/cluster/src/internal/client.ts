/**
 * The `Snakepit` service of a cluster member: each call becomes a message to an entity (the
 * session's, or a session-less one spread over shards), served by the runner that owns it.
 */
import { EntityId, Sharding } from "@effect/cluster"
import {
  type CallOptions,
  Diagnostics,
  EntityMoved,
  type PoolEvent,
  PoolNotFound,
  PoolReport,
  type PoolStats,
  QueueFull,
  RunnerUnreachable,
  type SnakepitService,
  ToolLatency,
  Worker,
  type WorkerInfo,
  WorkerNotFound
} from "@snakepit/core"
import { Cause, Duration, Effect, Option, Schedule, Stream } from "effect"
import type { ResolvedClusterOptions } from "../ClusterOptions.js"
import { Directory, type RunnerRecord } from "./directory.js"
import { CallEntity, RunnerEntity, SessionEntity } from "./protocol.js"
import type { LocalPool } from "./runner.js"

/** The entity mailbox bound @effect/cluster applies; past it a call gets `QueueFull`. */
const MAILBOX_CAPACITY = 4096

/** One key per shard (as far as a bounded search finds), so that turning through them visits every shard. */
const shardKeys = (sharding: Sharding.Sharding["Type"], shards: number): ReadonlyArray<string> => {
  const byShard = new Map<number, string>()
  for (let i = 0; i < shards * 20 && byShard.size < shards; i++) {
    const key = `call-${i}`
    const shard = sharding.getShardId(EntityId.make(key), "default").id
    if (!byShard.has(shard)) byShard.set(shard, key)
  }
  return [...byShard.entries()].sort(([a], [b]) => a - b).map(([, key]) => key)
}

const emptyStats = (pool: string): PoolStats => ({
  pool,
  size: 0,
  ready: 0,
  busy: 0,
  queued: 0,
  requests: 0,
  errors: 0,
  queueTimeouts: 0,
  restarts: 0
})

const sumStats = (pool: string, all: ReadonlyArray<PoolStats>): PoolStats =>
  all.reduce(
    (sum, s) => ({
      pool,
      size: sum.size + s.size,
      ready: sum.ready + s.ready,
      busy: sum.busy + s.busy,
      queued: sum.queued + s.queued,
      requests: sum.requests + s.requests,
      errors: sum.errors + s.errors,
      queueTimeouts: sum.queueTimeouts + s.queueTimeouts,
      restarts: sum.restarts + s.restarts
    }),
    emptyStats(pool)
  )

/**
 * One tool's latency over every runner: counts add up; the percentiles are the highest any
 * runner reports (a bound on the cluster's, not a merged percentile).
 */
const mergeLatency = (all: ReadonlyArray<ToolLatency>): ReadonlyArray<ToolLatency> => {
  const byTool = new Map<string, ToolLatency>()
  for (const t of all) {
    const seen = byTool.get(t.tool)
    byTool.set(
      t.tool,
      seen === undefined
        ? t
        : new ToolLatency({
            tool: t.tool,
            calls: seen.calls + t.calls,
            errors: seen.errors + t.errors,
            window: seen.window + t.window,
            p50Ms: Math.max(seen.p50Ms, t.p50Ms),
            p99Ms: Math.max(seen.p99Ms, t.p99Ms),
            maxMs: Math.max(seen.maxMs, t.maxMs)
          })
    )
  }
  return [...byTool.values()].sort((a, b) => a.tool.localeCompare(b.tool))
}

/** Builds the cluster's `Snakepit` service. `local` is this process's pool when it is a runner. */
export const make = (options: {
  readonly resolved: ResolvedClusterOptions
  /** The timeout of calls that give none (the cluster option, else the default decided by the layer). */
  readonly callTimeout: Duration.Duration
  readonly pools: ReadonlyArray<string>
  readonly local: LocalPool["Type"] | undefined
}) =>
  Effect.gen(function* () {
    const { local, pools, resolved } = options
    const sharding = yield* Sharding.Sharding
    const directory = yield* Directory
    const sessions = yield* SessionEntity.client
    const calls = yield* CallEntity.client
    const runnerOps = yield* RunnerEntity.client
    const keys = shardKeys(sharding, resolved.shards)
    let turn = 0
    const nextKey = () => keys[turn++ % keys.length]!
    const freshMs = Math.max(
      Duration.toMillis(Duration.times(resolved.publishInterval, 3)),
      Duration.toMillis(resolved.lockExpiration)
    )
    const defaultPool = pools[0] ?? "default"
    const local_ = resolved.sessionless === "local" ? local : undefined

    const timeoutOf = (opts: CallOptions) =>
      opts.timeout === undefined ? options.callTimeout : Duration.decode(opts.timeout)

    /** The client-side bound: the call's own timeout plus the time a runner may take to be found. */
    const deadline = (tool: string, timeout: Duration.Duration) =>
      !Duration.isFinite(timeout)
        ? undefined
        : {
            duration: Duration.sum(timeout, resolved.deliveryTimeout),
            onTimeout: () =>
              new RunnerUnreachable({
                runner: null,
                tool,
                detail: `no runner answered within the call's timeout plus the delivery timeout (${Duration.format(resolved.deliveryTimeout)})`
              })
          }

    const payloadOf = (tool: string, args: unknown, opts: CallOptions) =>
      Effect.map(Worker.encodeArgs(tool, args), (encoded) => ({
        tool,
        args: encoded.json,
        blobs: encoded.blobs,
        tagged: encoded.tagged,
        pool: opts.pool ?? null,
        timeoutMs: Duration.toMillis(timeoutOf(opts)),
        attachments: opts.attachments ?? null,
        sessionMoved: opts.sessionMoved === true
      }))

    /**
     * The entity client's own failures: a full mailbox is the cluster's `QueueFull`; the other
     * two concern persisted messages, which these are not.
     */
    const mailboxFull = (pool: string | undefined) => () =>
      Effect.fail(new QueueFull({ pool: pool ?? defaultPool, max: MAILBOX_CAPACITY }))

    /** An interruption the caller did not cause: the entity stopped serving the call. */
    const movedWhenInterrupted = (opts: CallOptions, tool: string, key: string) => (cause: Cause.Cause<unknown>) =>
      Cause.isInterruptedOnly(cause)
        ? Option.some(
            new EntityMoved({
              entity: opts.session === undefined ? "call" : "session",
              id: key,
              tool,
              detail: "the runner stopped serving it before the call finished (shard moved or runner stopping)"
            })
          )
        : Option.none()

    const execute: SnakepitService["execute"] = (tool, args, opts = {}) => {
      if (opts.session === undefined && local_ !== undefined) return local_.service.execute(tool, args, opts)
      return Effect.gen(function* () {
        const payload = yield* payloadOf(tool, args, opts)
        const key = opts.session ?? nextKey()
        const entity = opts.session === undefined ? calls(key) : sessions(key)
        const call = entity.Execute(payload).pipe(
          Effect.catchTags({
            MailboxFull: mailboxFull(opts.pool),
            AlreadyProcessingMessage: Effect.die,
            PersistenceError: Effect.die
          }),
          Effect.catchSomeCause((cause) => Option.map(movedWhenInterrupted(opts, tool, key)(cause), Effect.fail))
        )
        const bound = deadline(tool, timeoutOf(opts))
        return yield* bound === undefined ? call : Effect.timeoutFail(call, bound)
      })
    }

    const executeStream: SnakepitService["executeStream"] = (tool, args, opts = {}) => {
      if (opts.session === undefined && local_ !== undefined) return local_.service.executeStream(tool, args, opts)
      return Stream.unwrap(
        Effect.map(payloadOf(tool, args, opts), (payload) => {
          const key = opts.session ?? nextKey()
          const entity = opts.session === undefined ? calls(key) : sessions(key)
          const stream = entity
            .ExecuteStream(
              { ...payload, buffer: opts.buffer ?? null },
              { streamBufferSize: Math.max(1, opts.buffer ?? 16) }
            )
            .pipe(
              Stream.catchTags({
                MailboxFull: () => Stream.fromEffect(mailboxFull(opts.pool)()),
                AlreadyProcessingMessage: (e) => Stream.die(e),
                PersistenceError: (e) => Stream.die(e)
              }),
              Stream.catchSomeCause((cause) => Option.map(movedWhenInterrupted(opts, tool, key)(cause), Stream.fail))
            )
          // For a stream the timeout bounds the wait for each next chunk.
          const bound = deadline(tool, timeoutOf(opts))
          return bound === undefined ? stream : Stream.timeoutFail(stream, bound.onTimeout, bound.duration)
        })
      )
    }

    const runners = directory.runners(freshMs)

    const poolOf = (records: ReadonlyArray<RunnerRecord>, pool: string | undefined) =>
      Effect.suspend(() => {
        const name = pool ?? defaultPool
        const published = records.flatMap((r) => r.pools.filter((p) => p.pool === name))
        if (published.length === 0 && !pools.includes(name)) {
          return Effect.fail(new PoolNotFound({ pool: name, available: [...pools] }))
        }
        return Effect.succeed({ name, published })
      })

    const stats: SnakepitService["stats"] = (pool) =>
      Effect.flatMap(runners, (records) =>
        Effect.map(poolOf(records, pool), ({ name, published }) =>
          sumStats(
            name,
            published.map((p) => p.stats)
          )
        )
      )

    const workers: SnakepitService["workers"] = (pool) =>
      Effect.flatMap(runners, (records) =>
        Effect.map(poolOf(records, pool), ({ published }) =>
          published.flatMap((p) =>
            p.workers.map(
              (w): WorkerInfo => ({
                id: w.id,
                pool: w.pool,
                pid: w.pid,
                state: w.state,
                calls: w.calls,
                startedAt: w.startedAt
              })
            )
          )
        )
      )

    const report: SnakepitService["report"] = (pool) =>
      Effect.flatMap(runners, (records) =>
        Effect.map(
          poolOf(records, pool),
          ({ name, published }) =>
            new PoolReport({
              pool: name,
              min: published.reduce((n, p) => n + p.min, 0),
              max: published.reduce((n, p) => n + p.max, 0),
              draining: published.some((p) => p.draining),
              stats: sumStats(
                name,
                published.map((p) => p.stats)
              ),
              workers: published.flatMap((p) => p.workers),
              tools: mergeLatency(published.flatMap((p) => p.tools))
            })
        )
      )

    /** The live runners that serve pool `name`. */
    const serving = (records: ReadonlyArray<RunnerRecord>, name: string) =>
      records.filter((r) => r.pools.some((p) => p.pool === name))

    const resize: SnakepitService["resize"] = (size, pool) =>
      Effect.gen(function* () {
        const bounds = yield* Diagnostics.resolvePoolSize(size)
        const records = yield* runners
        const { name } = yield* poolOf(records, pool)
        const targets = serving(records, name)
        yield* Effect.forEach(
          targets,
          (r) => directory.command(r.instance, { kind: "resize", pool: name, min: bounds.min, max: bounds.max }),
          { discard: true }
        )
        return bounds
      })

    const drain: SnakepitService["drain"] = (pool) =>
      Effect.gen(function* () {
        const records = yield* runners
        const { name } = yield* poolOf(records, pool)
        const targets = new Set(serving(records, name).map((r) => r.instance))
        yield* Effect.forEach(targets, (instance) => directory.command(instance, { kind: "drain", pool: name }), {
          discard: true
        })
        // Done when every target still alive says its pool drains and runs no call; a runner that
        // died is no longer waited for.
        const drained = Effect.map(runners, (records) =>
          records
            .filter((r) => targets.has(r.instance))
            .every((r) => r.pools.every((p) => p.pool !== name || (p.draining && p.stats.busy === 0)))
        )
        yield* Effect.repeat(drained, { until: (done) => done, schedule: Schedule.spaced(resolved.publishInterval) })
      })

    /**
     * The runners' events from now on, read from the directory every publish interval: per
     * runner instance, those numbered past what it had stored when the stream started.
     */
    const events: Stream.Stream<PoolEvent> = Stream.unwrap(
      Effect.gen(function* () {
        const seen = new Map<string, number>()
        for (const e of yield* directory.events) seen.set(e.instance, Math.max(seen.get(e.instance) ?? -1, e.seq))
        const fresh = Effect.map(directory.events, (stored) =>
          stored.flatMap((e) => {
            if (e.seq <= (seen.get(e.instance) ?? -1)) return []
            seen.set(e.instance, e.seq)
            return [e.event]
          })
        )
        return Stream.repeatEffectWithSchedule(fresh, Schedule.spaced(resolved.publishInterval)).pipe(
          Stream.flattenIterables
        )
      })
    )

    /** The runner holding a worker, by the address its cluster id starts with. */
    const locate = (ref: string | Pick<WorkerInfo, "id">) =>
      Effect.gen(function* () {
        const id = typeof ref === "string" ? ref : ref.id
        const slash = id.indexOf("/")
        const address = slash < 0 ? "" : id.slice(0, slash)
        const record = (yield* runners).find((r) => r.address === address)
        if (record === undefined || record.routeKey === null) return yield* new WorkerNotFound({ workerId: id })
        return {
          record,
          routeKey: record.routeKey,
          target: { instance: record.instance, workerId: id.slice(slash + 1) }
        }
      })

    const notDelivered = <A, E, R>(self: Effect.Effect<A, E, R>) =>
      self.pipe(
        Effect.catchTags({
          // Worker operations are one message each; these cannot happen to them.
          MailboxFull: Effect.die,
          AlreadyProcessingMessage: Effect.die,
          PersistenceError: Effect.die
        })
      )

    const service: SnakepitService = {
      pools,
      execute,
      executeStream,
      describeTools: (pool) =>
        calls(nextKey())
          .DescribeTools({ pool: pool ?? null })
          .pipe(
            Effect.catchTags({
              MailboxFull: mailboxFull(pool),
              AlreadyProcessingMessage: Effect.die,
              PersistenceError: Effect.die
            })
          ),
      stats,
      workers,
      awaitReady: (pool) =>
        Effect.flatMap(runners, (records) =>
          Effect.flatMap(poolOf(records, pool), ({ published }) =>
            published.length > 0 && published.every((p) => p.stats.ready >= p.stats.size)
              ? Effect.succeed(true)
              : Effect.succeed(false)
          )
        ).pipe(
          Effect.repeat({ until: (ready) => ready, schedule: Schedule.spaced(resolved.publishInterval) }),
          Effect.asVoid
        ),
      resize,
      drain,
      report,
      events,
      stopWorker: (ref) =>
        Effect.flatMap(locate(ref), ({ routeKey, target }) => notDelivered(runnerOps(routeKey).StopWorker(target))),
      restartWorker: (ref) =>
        Effect.flatMap(locate(ref), ({ routeKey, target }) => notDelivered(runnerOps(routeKey).RestartWorker(target)))
    }
    return { service, runners }
  })
