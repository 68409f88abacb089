/**
 * The runner's half: the entity behaviours that serve calls on the local pool, and the
 * publisher that tells the other members what this runner holds.
 */
import { hostname } from "node:os"
import { Entity, EntityId, ShardId, Sharding } from "@effect/cluster"
import {
  type Affinity,
  type CallOptions,
  type PoolEvent,
  PoolReport,
  SessionWorkerUnavailable,
  type SnakepitService,
  Worker,
  WorkerDetail,
  type WorkerInfo,
  WorkerNotFound
} from "@snakepit/core"
import { Clock, Context, Duration, Effect, Layer, Schedule, Stream } from "effect"
import { type ControlCommand, Directory, type PreviousHolder } from "./directory.js"
import { CallEntity, RunnerEntity, SessionEntity } from "./protocol.js"

/** The pool this runner serves calls on, and each named pool's affinity. */
export class LocalPool extends Context.Tag("@snakepit/cluster/LocalPool")<
  LocalPool,
  {
    readonly service: SnakepitService
    readonly affinity: (pool: string | null) => Affinity
  }
>() {}

/** This runner: one instance id per start, so a restart at the same address is a different holder. */
export class RunnerIdentity extends Context.Tag("@snakepit/cluster/RunnerIdentity")<
  RunnerIdentity,
  { readonly instance: string; readonly address: string }
>() {}

interface CallPayload {
  readonly tool: string
  readonly args: string
  readonly blobs: ReadonlyArray<Uint8Array>
  readonly tagged: boolean
  readonly pool: string | null
  readonly timeoutMs: number
  readonly attachments: { readonly [key: string]: Uint8Array } | null
  readonly sessionMoved: boolean
}

/** The pool's `CallOptions` for a call that arrived through the cluster. */
const callOptions = (
  p: CallPayload & { readonly buffer?: number | null },
  session: string | undefined,
  moved: boolean
): CallOptions => ({
  ...(session === undefined ? {} : { session }),
  ...(p.pool === null ? {} : { pool: p.pool }),
  timeout: Duration.millis(p.timeoutMs),
  ...(p.buffer === undefined || p.buffer === null ? {} : { buffer: p.buffer }),
  ...(p.attachments === null ? {} : { attachments: p.attachments }),
  ...(moved || p.sessionMoved ? { sessionMoved: true } : {})
})

/**
 * Sends what the pool has ready, up to `max` values, as one chunk. The runner waits for the
 * client's acknowledgement of each chunk before it pulls the next (end-to-end back-pressure),
 * so one value per chunk would cost a network round trip per value.
 */
const batchAvailable = <A, E>(stream: Stream.Stream<A, E>, max: number): Stream.Stream<A, E> =>
  Stream.unwrapScoped(
    Effect.map(Stream.toQueueOfElements(stream, { capacity: max }), (queue) =>
      Stream.flattenExitOption(Stream.fromQueue(queue, { maxChunkSize: max }))
    )
  )

const STREAM_BATCH = 16

/** The arguments as the caller encoded them, decoded for the local pool (which checks them again). */
const argsOf = (p: CallPayload) => Worker.decodeArgs(p.tool, { json: p.args, blobs: p.blobs, tagged: p.tagged })

const movedError = (session: string, previous: PreviousHolder, self: { readonly address: string }) =>
  new SessionWorkerUnavailable({
    session,
    workerId: previous.address,
    reason:
      `moved: runner ${previous.address} no longer serves this session (its worker and state are gone); ` +
      `it now lives on runner ${self.address}, on a fresh worker`
  })

/**
 * Sessions: the first call after the session was re-created on this runner, having lived on
 * another runner instance, says so (strict affinity: `SessionWorkerUnavailable`, once; `hint`:
 * the call runs, with the moved flag for the tool).
 */
const sessionHandlers = Effect.gen(function* () {
  const address = yield* Entity.CurrentAddress
  const { affinity, service } = yield* LocalPool
  const self = yield* RunnerIdentity
  const directory = yield* Directory
  const session = address.entityId
  let moved: PreviousHolder | undefined = yield* directory.claimSession(session, self)
  if (moved !== undefined) {
    yield* Effect.logInfo(`cluster: session "${session}" moved here from runner ${moved.address}`)
  }
  /** The moved signal, given once: to whichever call of the session comes first. */
  const takeMoved = () => {
    const previous = moved
    moved = undefined
    return previous
  }
  return SessionEntity.of({
    Execute: ({ payload }) =>
      Effect.suspend(() => {
        const previous = takeMoved()
        if (previous !== undefined && affinity(payload.pool) !== "hint") {
          return Effect.fail(movedError(session, previous, self))
        }
        return Effect.flatMap(argsOf(payload), (args) =>
          service.execute(payload.tool, args, callOptions(payload, session, previous !== undefined))
        )
      }),
    ExecuteStream: ({ payload }) =>
      Stream.suspend(() => {
        const previous = takeMoved()
        if (previous !== undefined && affinity(payload.pool) !== "hint") {
          return Stream.fail(movedError(session, previous, self))
        }
        return Stream.unwrap(
          Effect.map(argsOf(payload), (args) =>
            batchAvailable(
              service.executeStream(payload.tool, args, callOptions(payload, session, previous !== undefined)),
              payload.buffer ?? STREAM_BATCH
            )
          )
        )
      }),
    DescribeTools: ({ payload }) => service.describeTools(payload.pool ?? undefined)
  })
})

/** Session-less calls: any runner's pool will do, so the entity only places the call. */
const callHandlers = Effect.map(LocalPool, ({ service }) =>
  CallEntity.of({
    Execute: ({ payload }) =>
      Effect.flatMap(argsOf(payload), (args) =>
        service.execute(payload.tool, args, callOptions(payload, undefined, false))
      ),
    ExecuteStream: ({ payload }) =>
      Stream.unwrap(
        Effect.map(argsOf(payload), (args) =>
          batchAvailable(
            service.executeStream(payload.tool, args, callOptions(payload, undefined, false)),
            payload.buffer ?? STREAM_BATCH
          )
        )
      ),
    DescribeTools: ({ payload }) => service.describeTools(payload.pool ?? undefined)
  })
)

/** A worker id as the cluster shows it: the runner's address, then the pool's own id. */
export const clusterWorkerId = (runner: string, workerId: string) => `${runner}/${workerId}`

const runnerHandlers = Effect.gen(function* () {
  const { service } = yield* LocalPool
  const self = yield* RunnerIdentity
  const mine = (instance: string, workerId: string) =>
    instance === self.instance ? Effect.void : Effect.fail(new WorkerNotFound({ workerId }))
  return RunnerEntity.of({
    StopWorker: ({ payload }) =>
      Effect.zipRight(mine(payload.instance, payload.workerId), service.stopWorker(payload.workerId)),
    RestartWorker: ({ payload }) =>
      Effect.zipRight(mine(payload.instance, payload.workerId), service.restartWorker(payload.workerId)).pipe(
        Effect.map((info): WorkerInfo => ({ ...info, id: clusterWorkerId(self.address, info.id) }))
      )
  })
})

/** The three entity types, registered with this runner's `Sharding`. */
export const layerEntities = (options: { readonly maxIdleTime: Duration.Duration }) =>
  Layer.mergeAll(
    SessionEntity.toLayer(sessionHandlers, { concurrency: "unbounded", maxIdleTime: options.maxIdleTime }),
    CallEntity.toLayer(callHandlers, { concurrency: "unbounded", maxIdleTime: options.maxIdleTime }),
    RunnerEntity.toLayer(runnerHandlers, { concurrency: "unbounded" })
  )

/**
 * A key of `snakepit/Runner` that lands on a shard this runner holds now, so that worker
 * operations reach it; the previous key while it still does.
 */
const findRouteKey = (sharding: Sharding.Sharding["Type"], previous: string | null, shards: number) => {
  const owned = (key: string) => sharding.hasShardId(sharding.getShardId(EntityId.make(key), "default"))
  if (previous !== null && owned(previous)) return previous
  for (let i = 0; i < shards * 8; i++) {
    const key = `runner-${i}`
    if (owned(key)) return key
  }
  return null
}

const heldShards = (sharding: Sharding.Sharding["Type"], shards: number) => {
  let held = 0
  for (let i = 1; i <= shards; i++) if (sharding.hasShardId(ShardId.make("default", i))) held++
  return held
}

/** Events a runner keeps for the directory between two publishes; past it the oldest are dropped. */
const EVENT_BUFFER = 1024

/** A pool event with its worker ids as the cluster shows them. */
const clusterEvent = (address: string, event: PoolEvent): PoolEvent => {
  if (!("workerId" in event)) return event
  const workerId = clusterWorkerId(address, event.workerId)
  return "replaces" in event
    ? { ...event, workerId, replaces: clusterWorkerId(address, event.replaces) }
    : { ...event, workerId }
}

/**
 * Publishes this runner's pools (their reports, worker ids as the cluster shows them), its
 * routing key and its pools' events every `interval`, applies the control commands addressed to
 * it (resize, drain) before each publish, and withdraws it when the runner stops.
 */
export const layerPublisher = (options: { readonly interval: Duration.Duration; readonly shards: number }) =>
  Layer.scopedDiscard(
    Effect.gen(function* () {
      const { service } = yield* LocalPool
      const self = yield* RunnerIdentity
      const directory = yield* Directory
      const sharding = yield* Sharding.Sharding
      const scope = yield* Effect.scope
      const startedAt = yield* Clock.currentTimeMillis
      let routeKey: string | null = null
      let events: Array<PoolEvent> = []
      let nextSeq = 0
      yield* service.events.pipe(
        Stream.runForEach((event) =>
          Effect.sync(() => {
            events.push(clusterEvent(self.address, event))
            if (events.length > EVENT_BUFFER) events.shift()
          })
        ),
        Effect.forkIn(scope)
      )
      // A command for a pool this runner does not have, or a size its pool refuses, changes nothing here.
      const refused = (command: ControlCommand) => (e: { readonly message: string }) =>
        Effect.logWarning(`cluster: ${command.kind} of pool "${command.pool}" not applied: ${e.message}`)
      const apply = (command: ControlCommand) =>
        command.kind === "resize"
          ? service
              .resize(command.min === command.max ? command.min : { min: command.min, max: command.max }, command.pool)
              .pipe(Effect.asVoid, Effect.catchTags({ PoolNotFound: refused(command), ConfigError: refused(command) }))
          : // The drain completes when the runner's calls in flight end; the report says when.
            service.drain(command.pool).pipe(Effect.catchTag("PoolNotFound", refused(command)), Effect.forkIn(scope))
      const publishOnce = Effect.gen(function* () {
        yield* Effect.forEach(yield* directory.takeCommands(self.instance), apply, { discard: true })
        routeKey = findRouteKey(sharding, routeKey, options.shards)
        const pools = yield* Effect.forEach(service.pools, (name) =>
          service.report(name).pipe(
            Effect.map(
              (report) =>
                new PoolReport({
                  ...report,
                  workers: report.workers.map(
                    (w) => new WorkerDetail({ ...w, id: clusterWorkerId(self.address, w.id) })
                  )
                })
            ),
            // The names come from the service itself.
            Effect.orDie
          )
        )
        const now = yield* Clock.currentTimeMillis
        const batch = events
        events = []
        yield* directory.appendEvents(
          self.instance,
          batch.map((event) => ({ seq: nextSeq++, event })),
          now
        )
        yield* directory.publish({
          instance: self.instance,
          address: self.address,
          pid: process.pid,
          hostname: hostname(),
          startedAt,
          heartbeatAt: now,
          routeKey,
          shards: heldShards(sharding, options.shards),
          pools
        })
      })
      yield* Effect.addFinalizer(() => directory.withdraw(self.instance))
      yield* publishOnce
      yield* publishOnce.pipe(
        // A storage hiccup skips one round; the next one publishes again.
        Effect.tapDefect((cause) => Effect.logWarning("cluster: could not publish this runner", cause)),
        Effect.exit,
        Effect.repeat(Schedule.spaced(options.interval)),
        Effect.forkScoped
      )
    })
  )
