/**
 * Commands that act on running hosts through their control sockets: `snakepit restart|stop
 * <worker>`, `snakepit resize <pool> <size>`, `snakepit drain <pool>`, `snakepit events`.
 * The target is looked up on every live host of the data dir (`--run` names one); a worker id
 * or pool found on several hosts is refused as ambiguous rather than guessed.
 *
 * @since 0.1.0
 */
import { Args, Command, Options } from "@effect/cli"
import { Control, PoolEvent as PoolEventSchema, type PoolReport } from "@snakepit/core"
import { Console, Duration, Effect, Option, Schema, Stream } from "effect"
import { DiagnosticFailure, TargetNotFound } from "./errors.js"
import { askAll, HostFailed, type HostRun, withHost } from "./internal/hosts.js"
import * as SharedOptions from "./internal/options.js"
import { renderEvent } from "./internal/pools.js"
import { liveRuns } from "./Top.js"

/** Where a target lives. */
interface Located {
  readonly run: HostRun
  readonly pools: ReadonlyArray<PoolReport>
}

/** The one live host whose pools satisfy `has`; TargetNotFound or an ambiguity failure otherwise. */
const locate = (
  command: string,
  target: string,
  options: { readonly dataDir: string | undefined; readonly runId: string | undefined; readonly json: boolean },
  has: (pools: ReadonlyArray<PoolReport>) => boolean
) =>
  Effect.gen(function* () {
    const runs = yield* liveRuns(command, options.dataDir, options.runId, options.json)
    const answers = yield* askAll(runs, (client) => client.Pools())
    const found: Array<Located> = []
    for (const answer of answers) {
      if (answer._tag === "Answered" && has(answer.value)) found.push({ run: answer.run, pools: answer.value })
    }
    const unreachable = answers.flatMap((a) => (a._tag === "Unreachable" ? [`run ${a.run.runId}: ${a.detail}`] : []))
    if (found.length === 0) {
      return yield* new TargetNotFound({
        command,
        target,
        detail: `looked in ${answers.length} live host(s)${unreachable.length > 0 ? `; could not ask ${unreachable.join("; ")}` : ""}`
      })
    }
    if (found.length > 1) {
      return yield* new DiagnosticFailure({
        command,
        problems: [`${target} exists in runs ${found.map((f) => f.run.runId).join(", ")}: choose one with --run RUNID`]
      })
    }
    return found[0]!
  })

/** A request the host refused, or a host that could not be reached: printed, and exit code 1. */
const refused = (command: string, json: boolean) => (error: { readonly message: string; readonly _tag: string }) =>
  Effect.zipRight(
    json
      ? Console.log(JSON.stringify({ error: { _tag: error._tag, message: error.message } }))
      : Console.error(`FAIL  ${error.message}`),
    Effect.fail(new DiagnosticFailure({ command, problems: [error.message] }))
  )

interface TargetOptions {
  readonly dataDir?: string | undefined
  readonly runId?: string | undefined
  readonly json?: boolean | undefined
}

const targetOptions = (options: TargetOptions) => ({
  dataDir: options.dataDir,
  runId: options.runId,
  json: options.json === true
})

const hasWorker = (workerId: string) => (pools: ReadonlyArray<PoolReport>) =>
  pools.some((pool) => pool.workers.some((w) => w.id === workerId && w.state !== "stopping"))

const workerOf = (located: Located, workerId: string) =>
  located.pools.flatMap((pool) => pool.workers).find((w) => w.id === workerId)!

/**
 * `snakepit restart <worker>`: replaces the worker; completes once the old process is gone and
 * the new one is ready, and prints both pids.
 */
export const restart = (workerId: string, options: TargetOptions & { readonly timeout?: Duration.DurationInput }) =>
  Effect.gen(function* () {
    const json = options.json === true
    const located = yield* locate("restart", `worker ${workerId}`, targetOptions(options), hasWorker(workerId))
    const old = workerOf(located, workerId)
    const replacement = yield* withHost(
      located.run.socket,
      (client) => client.RestartWorker({ workerId }),
      options.timeout ?? Duration.minutes(2)
    ).pipe(
      Effect.catchTags({
        WorkerNotFound: refused("restart", json),
        WorkerStartError: refused("restart", json),
        PoolClosed: refused("restart", json),
        ControlUnavailable: refused("restart", json),
        HostFailed: refused("restart", json)
      })
    )
    yield* json
      ? Console.log(
          JSON.stringify({
            runId: located.run.runId,
            restarted: { id: old.id, pid: old.pid },
            replacement: { id: replacement.id, pid: replacement.pid, pool: replacement.pool }
          })
        )
      : Console.log(
          `restarted ${old.id} (pid ${old.pid}) of run ${located.run.runId}: replacement ${replacement.id} (pid ${replacement.pid}) is ready`
        )
    return replacement
  })

/** `snakepit stop <worker>`: stops the worker after its calls, without a replacement; completes once its process is gone. */
export const stop = (workerId: string, options: TargetOptions & { readonly timeout?: Duration.DurationInput }) =>
  Effect.gen(function* () {
    const json = options.json === true
    const located = yield* locate("stop", `worker ${workerId}`, targetOptions(options), hasWorker(workerId))
    const old = workerOf(located, workerId)
    yield* withHost(
      located.run.socket,
      (client) => client.StopWorker({ workerId }),
      options.timeout ?? Duration.minutes(2)
    ).pipe(
      Effect.catchTags({
        WorkerNotFound: refused("stop", json),
        ControlUnavailable: refused("stop", json),
        HostFailed: refused("stop", json)
      })
    )
    yield* json
      ? Console.log(JSON.stringify({ runId: located.run.runId, stopped: { id: old.id, pid: old.pid } }))
      : Console.log(`stopped ${old.id} (pid ${old.pid}) of run ${located.run.runId}: its process is gone`)
  })

/** `4` or `2..8`. */
const parseSize = (text: string): { readonly min: number; readonly max: number } | undefined => {
  const range = /^(\d+)\.\.(\d+)$/.exec(text.trim())
  if (range) return { min: Number(range[1]), max: Number(range[2]) }
  return /^\d+$/.test(text.trim()) ? { min: Number(text), max: Number(text) } : undefined
}

/** `snakepit resize <pool> <size>`: new bounds (`4` fixed, `2..8` elastic); workers start or retire at once. */
export const resize = (pool: string, size: string, options: TargetOptions) =>
  Effect.gen(function* () {
    const json = options.json === true
    const bounds = parseSize(size)
    if (bounds === undefined) {
      return yield* refused(
        "resize",
        json
      )({
        _tag: "ConfigError",
        message: `bad size "${size}": expected a positive integer like 4, or min..max like 2..8`
      })
    }
    const located = yield* locate("resize", `pool ${pool}`, targetOptions(options), (pools) =>
      pools.some((p) => p.pool === pool)
    )
    const before = located.pools.find((p) => p.pool === pool)!
    const after = yield* withHost(located.run.socket, (client) => client.Resize({ pool, ...bounds })).pipe(
      Effect.catchTags({
        PoolNotFound: refused("resize", json),
        ConfigError: refused("resize", json),
        ControlUnavailable: refused("resize", json),
        HostFailed: refused("resize", json)
      })
    )
    yield* json
      ? Console.log(
          JSON.stringify({
            runId: located.run.runId,
            pool,
            min: after.min,
            max: after.max,
            previous: { min: before.min, max: before.max }
          })
        )
      : Console.log(
          `pool ${pool} of run ${located.run.runId}: min ${after.min}, max ${after.max} (was min ${before.min}, max ${before.max}); workers start or retire now`
        )
    return after
  })

/** `snakepit drain <pool>`: the pool takes no new calls; completes once its calls in flight ended. */
export const drain = (pool: string, options: TargetOptions & { readonly timeout?: Duration.DurationInput }) =>
  Effect.gen(function* () {
    const json = options.json === true
    const located = yield* locate("drain", `pool ${pool}`, targetOptions(options), (pools) =>
      pools.some((p) => p.pool === pool)
    )
    yield* withHost(
      located.run.socket,
      (client) => client.Drain({ pool }),
      options.timeout ?? Duration.minutes(5)
    ).pipe(
      Effect.catchTags({
        PoolNotFound: refused("drain", json),
        ControlUnavailable: refused("drain", json),
        HostFailed: refused("drain", json)
      })
    )
    yield* json
      ? Console.log(JSON.stringify({ runId: located.run.runId, pool, drained: true }))
      : Console.log(`pool ${pool} of run ${located.run.runId} drained: no call runs, new calls get PoolDraining`)
  })

const encodeEvent = Schema.encodeSync(PoolEventSchema)

/** One host's events as lines, from now on; a broken connection (the host died) fails the stream. */
const hostEvents = (run: HostRun, json: boolean): Stream.Stream<string, Control.ControlUnavailable | HostFailed> =>
  Stream.unwrapScoped(
    Effect.map(Control.connect(run.socket), (client) =>
      client.Events().pipe(
        Stream.mapError(
          (error) => new HostFailed({ socket: run.socket, detail: `the connection failed: ${error.message}` })
        ),
        Stream.map((event) =>
          json ? JSON.stringify({ runId: run.runId, ...encodeEvent(event) }) : renderEvent(run.runId, event)
        )
      )
    )
  )

/** Options of `snakepit events`. */
export interface EventsOptions extends TargetOptions {
  /** Keep printing until interrupted (Ctrl-C). Without it: the events of the next `wait`. */
  readonly follow?: boolean | undefined
  /** Without `follow`: how long to listen. Default 2 seconds. */
  readonly wait?: Duration.DurationInput | undefined
  /** Stop after this many events. */
  readonly count?: number | undefined
}

/**
 * `snakepit events [--follow]`: every live host's pool events as they happen (one line each, or
 * one JSON object per line). A host whose connection breaks (it died) gets a last line saying so,
 * and the command then exits with code 1.
 */
export const events = (options: EventsOptions = {}) =>
  Effect.gen(function* () {
    const json = options.json === true
    const runs = yield* liveRuns("events", options.dataDir, options.runId, json)
    const lost: Array<string> = []
    const ended = (run: HostRun) => (error: Control.ControlUnavailable | HostFailed) => {
      lost.push(`run ${run.runId}: ${error.message}`)
      return Stream.succeed(
        json
          ? JSON.stringify({ runId: run.runId, error: { _tag: error._tag, message: error.message } })
          : `${new Date().toISOString()}  ${run.runId}  host lost: ${error.message}`
      )
    }
    let lines = Stream.mergeAll(
      runs.map((run) =>
        hostEvents(run, json).pipe(Stream.catchTags({ ControlUnavailable: ended(run), HostFailed: ended(run) }))
      ),
      { concurrency: "unbounded" }
    )
    if (options.count !== undefined) lines = Stream.take(lines, options.count)
    if (options.follow !== true) {
      lines = Stream.interruptWhen(lines, Effect.sleep(options.wait ?? Duration.seconds(2)))
    }
    yield* Console.error(
      `${options.follow === true ? "following" : "listening to"} the events of ${runs.length} host(s): ${runs.map((r) => r.runId).join(", ")}`
    )
    yield* Stream.runForEach(lines, (line) => Console.log(line))
    if (lost.length > 0) return yield* new DiagnosticFailure({ command: "events", problems: lost })
  })

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

const workerArg = Args.text({ name: "worker" }).pipe(
  Args.withDescription("A worker id, as `snakepit status` shows it.")
)
const poolArg = Args.text({ name: "pool" }).pipe(Args.withDescription("A pool's name (`default` for a single pool)."))
const timeoutOption = (seconds: number) =>
  Options.integer("timeout").pipe(
    Options.withPseudoName("SECONDS"),
    Options.withDescription(`Longest wait for the host to complete it. Default ${seconds}.`),
    Options.withDefault(seconds)
  )

const common = { dataDir: SharedOptions.dataDir, run: SharedOptions.run, json: SharedOptions.json }

const commonOf = (o: {
  readonly dataDir: Option.Option<string>
  readonly run: Option.Option<string>
  readonly json: boolean
}) => ({ dataDir: Option.getOrUndefined(o.dataDir), runId: Option.getOrUndefined(o.run), json: o.json })

/** The `restart` subcommand. */
export const restartCommand = Command.make(
  "restart",
  { ...common, worker: workerArg, timeout: timeoutOption(120) },
  (o) => Effect.asVoid(restart(o.worker, { ...commonOf(o), timeout: Duration.seconds(o.timeout) }))
).pipe(
  Command.withDescription(
    "Replace a worker of a running host: its calls finish, its process is gone, a new one is ready. Prints both pids."
  )
)

/** The `stop` subcommand. */
export const stopCommand = Command.make("stop", { ...common, worker: workerArg, timeout: timeoutOption(120) }, (o) =>
  stop(o.worker, { ...commonOf(o), timeout: Duration.seconds(o.timeout) })
).pipe(Command.withDescription("Stop a worker of a running host after its calls finish; it is not replaced."))

/** The `resize` subcommand. */
export const resizeCommand = Command.make(
  "resize",
  {
    ...common,
    pool: poolArg,
    size: Args.text({ name: "size" }).pipe(
      Args.withDescription("A number of workers (fixed), or min..max (elastic), e.g. 4 or 2..8.")
    )
  },
  (o) => Effect.asVoid(resize(o.pool, o.size, commonOf(o)))
).pipe(
  Command.withDescription("Resize a pool of a running host: workers start (in the startup window) or retire at once.")
)

/** The `drain` subcommand. */
export const drainCommand = Command.make("drain", { ...common, pool: poolArg, timeout: timeoutOption(300) }, (o) =>
  drain(o.pool, { ...commonOf(o), timeout: Duration.seconds(o.timeout) })
).pipe(
  Command.withDescription(
    "Drain a pool of a running host: new calls fail with PoolDraining, the running ones finish; returns when none runs."
  )
)

/** The `events` subcommand. */
export const eventsCommand = Command.make(
  "events",
  {
    ...common,
    follow: Options.boolean("follow").pipe(
      Options.withAlias("f"),
      Options.withDescription("Keep printing events until interrupted.")
    ),
    wait: Options.integer("wait").pipe(
      Options.withPseudoName("SECONDS"),
      Options.withDescription("Without --follow: how long to listen. Default 2."),
      Options.withDefault(2)
    ),
    count: Options.integer("count").pipe(
      Options.withPseudoName("N"),
      Options.withDescription("Stop after N events."),
      Options.optional
    )
  },
  (o) =>
    events({
      ...commonOf(o),
      follow: o.follow,
      wait: Duration.seconds(o.wait),
      count: Option.getOrUndefined(o.count)
    })
).pipe(
  Command.withDescription(
    "Print the pool events of the running hosts (started, ready, crashed, recycled, restarted, queue full, resized, ...)."
  )
)
