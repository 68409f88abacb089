/**
 * @snakepit/registry: run ids, the SQLite process registry (runs and workers), run locks, the
 * startup orphan sweep and the proofs it kills by, and the last-resort exit hook.
 *
 * @since 0.1.0
 */

export { type ExitHookResult, exitHook, installExitHook, killGroups } from "./ExitHook.js"
export { RegistryError, RegistryUnavailable, WorkerNotFound } from "./errors.js"
/** Proving a process is ours (pid, start time, run id, session) before anything kills it. */
export * as Ownership from "./Ownership.js"
/** What the OS says about a process: alive, start time, command line, process group, session. */
export * as ProcessInfo from "./ProcessInfo.js"
export {
  orphansKilled,
  Registry,
  type RegistryOptions,
  type RegistryService,
  type RunLiveness,
  RunRecord,
  type SkippedProcess,
  type SweepReport,
  type SweptProcess,
  type WorkerKey,
  type WorkerProcess,
  WorkerRecord,
  WorkerState
} from "./Registry.js"
/** Run ids, one per host process. */
export * as RunId from "./RunId.js"
