/**
 * @snakepit/registry: run ids, the SQLite process registry (runs and workers), the startup
 * orphan sweep, and the last-resort exit hook.
 *
 * @since 0.1.0
 */

export { type ExitHookResult, exitHook, installExitHook, killGroups } from "./ExitHook.js"
export { RegistryError, RegistryUnavailable, WorkerNotFound } from "./errors.js"
/** What the OS says about a process: alive, start time, command line, process group. */
export * as ProcessInfo from "./ProcessInfo.js"
export {
  orphansKilled,
  Registry,
  type RegistryOptions,
  type RegistryService,
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
