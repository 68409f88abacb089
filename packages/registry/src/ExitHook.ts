/**
 * The last resort (LESSONS #8): when the Node process exits without having run its finalizers
 * (for example `process.exit()` from user code), kill every worker process group that is
 * still registered, synchronously, and say how many there were. Normal shutdown is the
 * finalizers; this hook is expected to find zero. It does not run on `kill -9` (nothing
 * does: there the workers' parent-death watch takes over) nor on signals that Node does not
 * handle (install SIGINT/SIGTERM handlers that close the runtime, so the finalizers run).
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import { liveProcessGroups } from "./ProcessInfo.js"

/** What the hook did at exit. */
export interface ExitHookResult {
  /** Process groups that were still alive and got SIGKILL. Expected: empty. */
  readonly killed: ReadonlyArray<number>
}

const killGroupsNow = (groups: ReadonlyArray<number>): ExitHookResult => {
  const killed: Array<number> = []
  const candidates = [...new Set(groups)].filter((pgid) => Number.isInteger(pgid) && pgid > 1 && pgid !== process.pid)
  if (candidates.length === 0) return { killed }
  // A group whose members are all zombies (exited, not yet reaped) is not counted as killed.
  const live = liveProcessGroups()
  for (const pgid of candidates) {
    if (live !== undefined && !live.has(pgid)) continue
    try {
      process.kill(-pgid, "SIGKILL")
      killed.push(pgid)
    } catch {
      // ESRCH: the group is already gone, as it should be. EPERM: not ours to kill.
    }
  }
  return { killed }
}

/**
 * Registers a `process.on("exit")` listener that SIGKILLs each group `getGroups()` still
 * returns and reports the count on stderr (and to `onKilled`, if given) when it is not zero.
 * Returns a function that removes the listener.
 */
export const installExitHook = (
  getGroups: () => ReadonlyArray<number>,
  onKilled?: (result: ExitHookResult) => void
): (() => void) => {
  const listener = () => {
    const result = killGroupsNow(getGroups())
    if (result.killed.length > 0) {
      process.stderr.write(
        `snakepit: exit hook killed ${result.killed.length} worker process group(s) still registered at exit: ${result.killed.join(", ")}\n`
      )
    }
    onKilled?.(result)
  }
  process.on("exit", listener)
  return () => {
    process.off("exit", listener)
  }
}

/** {@link installExitHook} for the lifetime of the current scope. */
export const exitHook = (getGroups: () => ReadonlyArray<number>, onKilled?: (result: ExitHookResult) => void) =>
  Effect.acquireRelease(
    Effect.sync(() => installExitHook(getGroups, onKilled)),
    (uninstall) => Effect.sync(uninstall)
  ).pipe(Effect.asVoid)

/** Runs the hook's kill once, now (for tests and for diagnostics). */
export const killGroups = (groups: ReadonlyArray<number>): ExitHookResult => killGroupsNow(groups)
