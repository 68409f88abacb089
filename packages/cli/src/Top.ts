/**
 * `snakepit top`: a live view of every running host of a data dir, through their control
 * sockets: pools (size, bounds, queue, busy workers, requests, errors, restarts), workers
 * (pid, state, calls, RSS, age, current tool) and per-tool latency (p50/p99). Refreshes every
 * `--interval`; `--once` prints one frame; `--json` prints each frame as one line of JSON.
 * Plain text (no ANSI codes) when stdout is not a terminal.
 *
 * @since 0.1.0
 */
import { Command, Options } from "@effect/cli"
import type { PoolReport } from "@snakepit/core"
import { Console, Duration, Effect, Option } from "effect"
import { DiagnosticFailure, TargetNotFound } from "./errors.js"
import { registryLayer } from "./internal/dataDir.js"
import { askAll, type HostAnswer, type HostRun, hostRuns } from "./internal/hosts.js"
import * as SharedOptions from "./internal/options.js"
import { poolJson, renderPool } from "./internal/pools.js"
import { reportRegistryFailure } from "./internal/registryFailure.js"

/** One frame: what every live host answered, and the hosts that could not. */
export interface TopFrame {
  readonly at: Date
  readonly hosts: ReadonlyArray<{
    readonly runId: string
    readonly pid: number
    readonly socket: string
    readonly pools: ReadonlyArray<PoolReport>
  }>
  readonly unreachable: ReadonlyArray<{
    readonly runId: string
    readonly socket: string
    readonly reason: string
    readonly detail: string
  }>
}

/** The live runs of the registry (`runId` narrows to one), or TargetNotFound when there is none. */
export const liveRuns = (command: string, dataDir: string | undefined, runId: string | undefined, json: boolean) =>
  hostRuns.pipe(
    Effect.provide(registryLayer(dataDir)),
    Effect.catchTags({
      RegistryUnavailable: reportRegistryFailure(command, json),
      RegistryError: reportRegistryFailure(command, json)
    }),
    Effect.map((runs) => runs.filter((run) => run.alive && (runId === undefined || run.runId === runId))),
    Effect.filterOrFail(
      (runs) => runs.length > 0,
      () =>
        new TargetNotFound({
          command,
          target: runId === undefined ? "live host" : `live host of run ${runId}`,
          detail: `no live run with a control socket in the registry${dataDir === undefined ? "" : ` of ${dataDir}`}`
        })
    )
  )

/** Asks the live hosts for their pools: one frame. */
export const frame = (runs: ReadonlyArray<HostRun>): Effect.Effect<TopFrame> =>
  Effect.map(
    askAll(runs, (client) => client.Pools()),
    (answers: ReadonlyArray<HostAnswer<ReadonlyArray<PoolReport>>>): TopFrame => ({
      at: new Date(),
      hosts: answers.flatMap((a) =>
        a._tag === "Answered" ? [{ runId: a.run.runId, pid: a.run.ownerPid, socket: a.run.socket, pools: a.value }] : []
      ),
      unreachable: answers.flatMap((a) =>
        a._tag === "Unreachable"
          ? [{ runId: a.run.runId, socket: a.run.socket, reason: a.reason, detail: a.detail }]
          : []
      )
    })
  )

/** A frame as text lines. */
export const render = (top: TopFrame): ReadonlyArray<string> => {
  const lines = [`snakepit top  ${top.at.toISOString()}  ${top.hosts.length} live host(s)`]
  for (const host of top.hosts) {
    lines.push("", `run ${host.runId}  pid ${host.pid}  ${host.socket}`)
    for (const pool of host.pools) lines.push(...renderPool(pool, "  "))
  }
  for (const host of top.unreachable) lines.push("", `run ${host.runId}: ${host.reason.toUpperCase()}: ${host.detail}`)
  return lines
}

/** A frame as JSON-ready data. */
export const toJson = (top: TopFrame) => ({
  at: top.at.toISOString(),
  hosts: top.hosts.map((host) => ({ ...host, pools: host.pools.map((pool) => poolJson(pool)) })),
  unreachable: top.unreachable
})

/** Options of `snakepit top`. */
export interface TopOptions {
  readonly dataDir?: string | undefined
  readonly runId?: string | undefined
  readonly json?: boolean | undefined
  /** Print one frame and exit. */
  readonly once?: boolean | undefined
  /** Time between frames. Default 2 seconds. */
  readonly interval?: Duration.DurationInput | undefined
}

/** Clears a terminal before each frame; nothing when stdout is not a terminal. */
const CLEAR = "\u001b[H\u001b[2J"

/**
 * Prints frames until interrupted (or one with `once`). Fails with {@link TargetNotFound} (exit
 * code 3) when no host is live, and, with `once`, {@link DiagnosticFailure} (exit code 1) when
 * a live host's socket did not answer.
 */
export const top = (options: TopOptions = {}): Effect.Effect<void, DiagnosticFailure | TargetNotFound> =>
  Effect.gen(function* () {
    const json = options.json === true
    const runs = yield* liveRuns("top", options.dataDir, options.runId, json)
    const interval = Duration.decode(options.interval ?? Duration.seconds(2))
    const terminal = process.stdout.isTTY === true && !json
    while (true) {
      const current = yield* frame(runs)
      const text = json ? JSON.stringify(toJson(current)) : render(current).join("\n")
      yield* Console.log(terminal && options.once !== true ? `${CLEAR}${text}` : json ? text : `${text}\n`)
      if (options.once === true) {
        if (current.unreachable.length > 0) {
          return yield* new DiagnosticFailure({
            command: "top",
            problems: current.unreachable.map((host) => `run ${host.runId}: ${host.reason}`)
          })
        }
        return
      }
      yield* Effect.sleep(interval)
    }
  })

/** The `top` subcommand. */
export const command = Command.make(
  "top",
  {
    dataDir: SharedOptions.dataDir,
    run: SharedOptions.run,
    json: SharedOptions.json,
    once: Options.boolean("once").pipe(Options.withDescription("Print one frame and exit.")),
    interval: Options.integer("interval").pipe(
      Options.withPseudoName("SECONDS"),
      Options.withDescription("Seconds between frames. Default 2."),
      Options.withDefault(2)
    )
  },
  ({ dataDir, interval, json, once, run }) =>
    top({
      dataDir: Option.getOrUndefined(dataDir),
      runId: Option.getOrUndefined(run),
      json,
      once,
      interval: Duration.seconds(Math.max(1, interval))
    })
).pipe(
  Command.withDescription(
    "Live view of the running hosts: pools, queue, workers (pid, state, calls, RSS, age, current tool), per-tool p50/p99 latency, restarts. --once prints one frame; --json prints JSON lines."
  )
)
