/**
 * Reporting a registry that cannot be opened or read, the same way in every command.
 *
 * @internal
 */
import { existsSync } from "node:fs"
import { Registry, type RegistryError, type RegistryUnavailable } from "@snakepit/registry"
import { Console, Effect } from "effect"
import { DiagnosticFailure } from "../errors.js"
import { type DataDirSource, dataDirFix, underAFile } from "./dataDir.js"

/** A registry failure as a doctor-style check: what failed and what to do. */
export interface RegistryProblem {
  readonly detail: string
  readonly fix: string
}

/** What failed and what to do, for a registry that cannot be opened or read. */
export const describeRegistryFailure = (error: RegistryUnavailable | RegistryError): RegistryProblem =>
  error._tag === "RegistryUnavailable"
    ? {
        detail: `cannot open the registry in ${error.dataDir}: ${error.reason}`,
        fix: error.fix ?? dataDirFix(error.dataDir, error.reason)
      }
    : {
        detail: error.message,
        fix: "the registry database answered with an error: retry; if it persists, move registry.db aside (a new one is created)"
      }

/**
 * Prints the failure (as `{"error": {...}}` on stdout with `json`, else as FAIL and fix lines on
 * stderr) and fails with {@link DiagnosticFailure}.
 */
export const reportRegistryFailure =
  (command: string, json: boolean) =>
  (error: RegistryUnavailable | RegistryError): Effect.Effect<never, DiagnosticFailure> => {
    const problem = describeRegistryFailure(error)
    const print = json
      ? Console.log(JSON.stringify({ error: { check: "data-dir", status: "fail", ...problem } }, null, 2))
      : Console.error(`FAIL  ${problem.detail}\n      fix: ${problem.fix}`)
    return Effect.zipRight(print, Effect.fail(new DiagnosticFailure({ command, problems: [problem.detail] })))
  }

/**
 * The data directory `explicit` resolves to, when it exists. When it does not, prints what that
 * means (as FAIL and fix lines on stderr, or `{"error": {...}}` on stdout with `json`) and fails
 * with {@link DiagnosticFailure}: a typo in `--data-dir` must not pass for an empty registry,
 * and a command that only looks must not create anything.
 */
export const existingDataDir = (
  command: string,
  explicit: string | undefined,
  source: DataDirSource,
  json: boolean
): Effect.Effect<string, DiagnosticFailure> =>
  Registry.resolveDataDir(explicit).pipe(
    Effect.catchTag("RegistryUnavailable", reportRegistryFailure(command, json)),
    Effect.flatMap((dataDir) => {
      // Under a file, opening fails (ENOTDIR, nothing created) and dataDirFix names that file.
      if (existsSync(dataDir) || underAFile(dataDir)) return Effect.succeed(dataDir)
      const detail = `the data directory ${dataDir} does not exist (data dir from ${source}): no pool has recorded a run there, and nothing was created`
      const fix =
        source === "--data-dir"
          ? "check the path: pass --data-dir the directory your pools use (their `dataDir` option, else SNAKEPIT_DATA_DIR, else the per-user default)"
          : source === "SNAKEPIT_DATA_DIR"
            ? "check SNAKEPIT_DATA_DIR: set it to the directory your pools use, or pass --data-dir"
            : "no pool has run here with the default data dir: pass --data-dir (or set SNAKEPIT_DATA_DIR) to the directory your pools use"
      const print = json
        ? Console.log(JSON.stringify({ error: { check: "data-dir", status: "fail", detail, fix } }, null, 2))
        : Console.error(`FAIL  ${detail}\n      fix: ${fix}`)
      return Effect.zipRight(print, Effect.fail(new DiagnosticFailure({ command, problems: [detail] })))
    })
  )
