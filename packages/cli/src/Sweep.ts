/**
 * `snakepit sweep`: runs the registry's orphan sweep now, as a pool does at startup. For each
 * run whose host is gone (its OS lock free) it SIGKILLs the run's workers, each only once the OS
 * proves it the recorded process (pid, start time, run id), their groups when they lead them, and
 * the processes in their sessions; a reused pid, or a process that merely carries the run id, is
 * never touched, only reported. Then it deletes the run's rows (and those of runs that ended
 * cleanly before their host exited). Runs of live hosts and of other hosts are left alone. A data
 * directory that does not exist is reported, not created.
 *
 * @since 0.1.0
 */
import { Command } from "@effect/cli"
import { Registry, type SweepReport } from "@snakepit/registry"
import { Console, Effect, Option } from "effect"
import type { DiagnosticFailure } from "./errors.js"
import { type DataDirSource, dataDirSource, registryLayer } from "./internal/dataDir.js"
import { count } from "./internal/format.js"
import * as SharedOptions from "./internal/options.js"
import { existingDataDir, reportRegistryFailure } from "./internal/registryFailure.js"

/** What `snakepit sweep` did, and in which registry. */
export interface SweepResult extends SweepReport {
  readonly dataDir: string
  readonly databasePath: string
}

/** The registry's sweep, with the registry it ran on. */
export const runSweep = Effect.gen(function* () {
  const registry = yield* Registry
  const report = yield* registry.sweep()
  return { ...report, dataDir: registry.dataDir, databasePath: registry.databasePath } satisfies SweepResult
})

/** The result as text lines, as `snakepit sweep` prints it. */
export const render = (result: SweepResult, source: DataDirSource): ReadonlyArray<string> => {
  const lines = [`registry: ${result.databasePath} (data dir from ${source})`]
  const ended =
    result.endedRunsRemoved > 0
      ? `removed the rows of ${count(result.endedRunsRemoved, "cleanly ended run")} whose host has exited`
      : ""
  if (result.runsSwept === 0 && result.killed.length === 0 && result.skipped.length === 0) {
    lines.push(`nothing to sweep: no run of this host has a dead owner${ended === "" ? "" : ` (${ended})`}`)
    return lines
  }
  lines.push(
    `swept ${count(result.runsSwept, "dead run")}; killed ${count(result.killed.length, "orphaned process", "orphaned processes")}${ended === "" ? "" : `; ${ended}`}${result.killed.length > 0 ? ":" : ""}`
  )
  for (const killed of result.killed) {
    const what = killed.via === "row" ? "registered worker" : "process in a registered worker's session"
    const group = killed.pgid === null ? "the process alone" : `its process group ${killed.pgid}`
    lines.push(`  killed pid ${killed.pid} (${what} of run ${killed.runId}; SIGKILL to ${group})`)
  }
  for (const skipped of result.skipped) {
    lines.push(`  left pid ${skipped.pid} alone (run ${skipped.runId}): ${skipped.reason}`)
  }
  return lines
}

/** Options of `snakepit sweep`. */
export interface SweepOptions {
  /** The registry's directory; default SNAKEPIT_DATA_DIR, else the per-user state directory. */
  readonly dataDir?: string | undefined
  /** Print JSON instead of text. */
  readonly json?: boolean | undefined
}

/**
 * Sweeps the registry and prints what was killed (text or JSON). Fails with
 * {@link DiagnosticFailure} (after printing what to do) when the registry cannot be used.
 */
export const sweep = (options: SweepOptions = {}): Effect.Effect<SweepResult, DiagnosticFailure> =>
  Effect.gen(function* () {
    const json = options.json === true
    const source = yield* dataDirSource(options.dataDir)
    yield* existingDataDir("sweep", options.dataDir, source, json)
    const result = yield* runSweep.pipe(
      Effect.provide(registryLayer(options.dataDir)),
      Effect.catchTags({
        RegistryUnavailable: reportRegistryFailure("sweep", json),
        RegistryError: reportRegistryFailure("sweep", json)
      })
    )
    yield* json
      ? Console.log(JSON.stringify({ ...result, dataDirSource: source }, null, 2))
      : Console.log(render(result, source).join("\n"))
    return result
  })

/** The `sweep` subcommand. */
export const command = Command.make(
  "sweep",
  { dataDir: SharedOptions.dataDir, json: SharedOptions.json },
  ({ dataDir, json }) => Effect.asVoid(sweep({ dataDir: Option.getOrUndefined(dataDir), json }))
).pipe(
  Command.withDescription(
    "Kill the orphaned worker processes of dead runs (each proven by its pid, start time and run id, or by its worker's session) and delete those runs' rows."
  )
)
