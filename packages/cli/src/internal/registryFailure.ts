/**
 * Reporting a registry that cannot be opened or read, the same way in every command.
 *
 * @internal
 */
import type { RegistryError, RegistryUnavailable } from "@snakepit/registry"
import { Console, Effect } from "effect"
import { DiagnosticFailure } from "../errors.js"
import { dataDirFix } from "./dataDir.js"

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
        fix: dataDirFix(error.dataDir, error.reason)
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
