/**
 * The run lock: a live host holds an OS lock for each of its runs, and a run is dead only when
 * its lock is free. The kernel releases the lock when the process dies, however it dies, so
 * liveness never rests on a row anyone could write (ADR 0011).
 *
 * Node has no flock; SQLite's unix VFS takes POSIX fcntl locks. Each run has a file
 * `<dataDir>/runs/<runId>.lock`, opened with better-sqlite3 in `locking_mode=EXCLUSIVE` inside a
 * `BEGIN EXCLUSIVE` transaction that is never committed: an exclusive fcntl lock on the file for
 * as long as the connection is open. A probe opens the file read-only with a zero busy timeout
 * and reads: SQLITE_BUSY while the owner lives, success once it is gone. SQLite tracks locks per
 * inode inside a process, so a probe from the holder's own process also sees BUSY.
 *
 * POSIX locks have one trap: closing *any* descriptor of the file in the holding process drops
 * the lock. Nothing here opens a lock file with `node:fs` while this process may hold it: files
 * are created (and checked with lstat) before SQLite opens them, and the probe goes through SQLite.
 *
 * @internal
 */
import { closeSync, constants, lstatSync, mkdirSync, openSync, readdirSync, unlinkSync } from "node:fs"
import { join } from "node:path"
import Database from "better-sqlite3"
import { checkPrivateDirectory, describeError } from "./database.js"

/** `held`: a live process holds it; `free`: nobody does (or there is no file); `unknown`: cannot tell. */
export type LockState = "held" | "free" | "unknown"

const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/

/** Run ids that can name a lock file: no separators, no leading dot, at most 128 characters. */
export const isSafeRunId = (runId: string): boolean => RUN_ID.test(runId)

/** The directory of the lock files. */
export const locksDirectory = (dataDir: string): string => join(dataDir, "runs")

/** The lock file of `runId`. */
export const lockPath = (dataDir: string, runId: string): string => join(locksDirectory(dataDir), `${runId}.lock`)

interface Held {
  readonly db: Database.Database
  refs: number
}

/** Locks this process holds, by file: one connection per file, shared by every registry here. */
const held = new Map<string, Held>()

const errorCode = (error: unknown): string | undefined => {
  const code = (error as { code?: unknown }).code
  return typeof code === "string" ? code : undefined
}

/** An Error saying `message`, keeping the errno or SQLite code of `cause` (ENOSPC, SQLITE_BUSY, ...). */
const failure = (message: string, cause?: unknown): Error => {
  const error = new Error(message) as NodeJS.ErrnoException
  const code = cause === undefined ? undefined : errorCode(cause)
  if (code !== undefined) error.code = code
  return error
}

/**
 * The lock file, created (0600, never through a link) if missing, and checked to be a plain file
 * of ours. Returns its inode, so that the caller can tell the file it locked is still this one.
 */
const ensureLockFile = (dataDir: string, path: string): number => {
  const dir = locksDirectory(dataDir)
  try {
    mkdirSync(dir, { mode: 0o700 })
  } catch (error) {
    if (errorCode(error) !== "EEXIST") throw failure(`cannot create ${dir} (${describeError(error)})`, error)
  }
  const problem = checkPrivateDirectory(dir)
  if (problem !== undefined) throw failure(problem.reason)
  try {
    closeSync(openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600))
  } catch (error) {
    if (errorCode(error) !== "EEXIST") throw failure(`cannot create ${path} (${describeError(error)})`, error)
  }
  const stats = lstatSync(path)
  if (!stats.isFile()) throw failure(`${path} is not a regular file`)
  const uid = process.getuid?.()
  if (uid !== undefined && stats.uid !== uid) throw failure(`${path} is owned by uid ${stats.uid}, not this user`)
  return stats.ino
}

const inodeOf = (path: string): number | undefined => {
  try {
    return lstatSync(path).ino
  } catch {
    return undefined
  }
}

/** Opens `path` and holds an exclusive lock on it: the connection that holds it. */
const lockFile = (path: string, runId: string): Database.Database => {
  let db: Database.Database
  try {
    db = new Database(path, { fileMustExist: true, timeout: 0 })
  } catch (error) {
    throw failure(`cannot open ${path} (${describeError(error)})`, error)
  }
  try {
    // No journal file: the transaction never writes, it only holds the lock.
    db.pragma("journal_mode = MEMORY")
    db.pragma("locking_mode = EXCLUSIVE")
    db.exec("BEGIN EXCLUSIVE")
    return db
  } catch (error) {
    db.close()
    throw failure(
      errorCode(error) === "SQLITE_BUSY"
        ? `another live process holds the lock of run ${runId} (${path})`
        : `cannot lock ${path} (${describeError(error)})`,
      error
    )
  }
}

/** A sweep may remove a free lock file between its creation and its locking: then start over, a few times. */
const ATTEMPTS = 3

/**
 * Takes the lock of `runId` for this process (again: counted, so that every `acquire` needs its
 * `release`). Throws when the file cannot be made or another live process holds the lock; the
 * error keeps the errno (ENOSPC on a full file system).
 */
export const acquire = (dataDir: string, runId: string): void => {
  if (!isSafeRunId(runId)) throw failure(`run id ${JSON.stringify(runId)} cannot name a lock file`)
  const path = lockPath(dataDir, runId)
  const mine = held.get(path)
  if (mine !== undefined) {
    mine.refs += 1
    return
  }
  for (let attempt = 1; ; attempt++) {
    const inode = ensureLockFile(dataDir, path)
    let db: Database.Database
    try {
      db = lockFile(path, runId)
    } catch (error) {
      if (attempt < ATTEMPTS && inodeOf(path) !== inode) continue // removed meanwhile
      throw error
    }
    // Locked, so a sweep now sees it held. Still the file at `path` (not removed before we locked it)?
    if (inodeOf(path) === inode) {
      held.set(path, { db, refs: 1 })
      return
    }
    db.close()
    if (attempt >= ATTEMPTS) throw failure(`the lock file ${path} kept being removed while it was being locked`)
  }
}

/**
 * Gives back one `acquire`. The last one removes the file, then closes the connection (which
 * releases the lock): nobody can take a lock on a file that is then deleted. True when this
 * process no longer holds the lock.
 */
export const release = (dataDir: string, runId: string): boolean => {
  const path = lockPath(dataDir, runId)
  const mine = held.get(path)
  if (mine === undefined) return true
  mine.refs -= 1
  if (mine.refs > 0) return false
  held.delete(path)
  try {
    unlinkSync(path)
  } catch {
    // Already removed (by hand): the lock is released all the same.
  }
  mine.db.close()
  return true
}

/** How many `acquire`s of `runId`'s lock this process holds (0: it does not hold it). */
export const holds = (dataDir: string, runId: string): number => held.get(lockPath(dataDir, runId))?.refs ?? 0

/** Whether a live process holds the lock of `runId`. */
export const probe = (dataDir: string, runId: string): LockState => {
  if (!isSafeRunId(runId)) return "free"
  const path = lockPath(dataDir, runId)
  if (held.has(path)) return "held"
  let isFile: boolean
  try {
    isFile = lstatSync(path).isFile()
  } catch (error) {
    return errorCode(error) === "ENOENT" ? "free" : "unknown"
  }
  // A link or a directory where a lock file should be: nobody's lock, but nothing to trust either.
  if (!isFile) return "unknown"
  let db: Database.Database | undefined
  try {
    db = new Database(path, { readonly: true, fileMustExist: true, timeout: 0 })
    db.prepare("SELECT count(*) FROM sqlite_master").get()
    return "free"
  } catch (error) {
    const code = errorCode(error)
    if (code === "SQLITE_BUSY" || code === "SQLITE_LOCKED") return "held"
    // Not a database: SQLite took the shared lock before reading, so nobody holds it.
    if (code === "SQLITE_NOTADB") return "free"
    return "unknown"
  } finally {
    db?.close()
  }
}

/** Removes the lock file of `runId` when nobody holds it. True when it is gone. */
export const removeIfFree = (dataDir: string, runId: string): boolean => {
  if (!isSafeRunId(runId) || probe(dataDir, runId) !== "free") return false
  try {
    unlinkSync(lockPath(dataDir, runId))
  } catch (error) {
    return errorCode(error) === "ENOENT"
  }
  return true
}

/** The run ids that have a lock file in `dataDir`. */
export const lockedRunIds = (dataDir: string): ReadonlyArray<string> => {
  let names: ReadonlyArray<string>
  try {
    names = readdirSync(locksDirectory(dataDir))
  } catch {
    return []
  }
  return names
    .filter((name) => name.endsWith(".lock"))
    .map((name) => name.slice(0, -".lock".length))
    .filter(isSafeRunId)
}
