/**
 * Finding, checking and preparing the registry database file before the SQL client opens it.
 *
 * Nothing in the data directory is trusted blindly (ADR 0011): the directory must be this user's
 * and writable by nobody else, and `registry.db` and its `-wal`/`-shm` companions must be plain
 * files of ours, checked with lstat before anything opens, creates or chmods them (a link there
 * is refused, never followed). A full file system is said as such, with the fix.
 *
 * @internal
 */
import {
  accessSync,
  chmodSync,
  closeSync,
  constants,
  fchmodSync,
  lstatSync,
  mkdirSync,
  openSync,
  readlinkSync,
  renameSync,
  type Stats,
  statfsSync,
  statSync
} from "node:fs"
import { homedir } from "node:os"
import { join, resolve } from "node:path"
import Database from "better-sqlite3"
import { Clock, Config, Effect, Option } from "effect"
import { RegistryUnavailable } from "../errors.js"

/** The database file's name inside the data directory. */
export const DATABASE_FILE = "registry.db"

const COMPANIONS = ["-wal", "-shm"] as const

/** An error as text, with its errno or SQLite code in front when it has one. */
export const describeError = (error: unknown): string => {
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code
    return code !== undefined && !error.message.startsWith(code) ? `${code}: ${error.message}` : error.message
  }
  return String(error)
}

const codeOf = (error: unknown): string | undefined => {
  const code = (error as { code?: unknown } | undefined)?.code
  return typeof code === "string" ? code : undefined
}

/** Codes that mean the file system (or the user's quota) is full. */
const FULL = new Set(["ENOSPC", "EDQUOT", "SQLITE_FULL"])

/** Below this much free space, an I/O error while writing the registry is taken for a full disk. */
const NEARLY_FULL_BYTES = 1024 * 1024

/**
 * Why `error` means the file system of `dataDir` is full, or undefined: its code says so
 * (ENOSPC, EDQUOT, SQLITE_FULL), or it is an I/O error and statfs shows (almost) no space left.
 * SQLite reports a -shm file it cannot grow as SQLITE_IOERR_SHMSIZE, not as SQLITE_FULL.
 */
export const diskFull = (error: unknown, dataDir: string): string | undefined => {
  const code = codeOf(error)
  if (code !== undefined && FULL.has(code)) return code
  if (code === undefined || !/^(SQLITE_IOERR|SQLITE_CANTOPEN|EIO$)/.test(code)) return undefined
  try {
    const { bavail, bsize } = statfsSync(dataDir)
    const free = Number(bavail) * Number(bsize)
    return free < NEARLY_FULL_BYTES ? `${code}, with ${Math.floor(free / 1024)} kB free on its file system` : undefined
  } catch {
    return undefined
  }
}

/** What to do when the data directory's file system is full. */
export const diskFullFix = (dataDir: string): string =>
  `Free space on the file system that holds ${dataDir} (see \`df -h ${dataDir}\`), or set SNAKEPIT_DATA_DIR (or the dataDir option) to a directory on another file system.`

/** A problem with a path, and what to do about it (when there is better advice than the generic one). */
export interface PathProblem {
  readonly reason: string
  readonly fix?: string
}

const privateDirFix = (path: string): string =>
  `Set SNAKEPIT_DATA_DIR (or the dataDir option) to a directory of your own that nobody else can write (a pool creates a missing one with mode 0700), or fix ${path}.`

/**
 * Why `path` is not a private directory of this user (not a directory, another user's, writable
 * by group or others), or undefined when it is. `followLinks` for the data directory itself (a
 * link chosen by its owner); directories inside it are checked without following.
 */
export const checkPrivateDirectory = (path: string, followLinks = false): PathProblem | undefined => {
  let stats: Stats
  try {
    stats = followLinks ? statSync(path) : lstatSync(path)
  } catch (error) {
    return { reason: `cannot stat ${path} (${describeError(error)})`, fix: privateDirFix(path) }
  }
  if (stats.isSymbolicLink()) {
    return { reason: `${path} is a symbolic link`, fix: `Remove the link ${path} (it is recreated as a directory).` }
  }
  if (!stats.isDirectory()) return { reason: `${path} is not a directory` }
  const uid = process.getuid?.()
  if (uid === undefined) return undefined
  if (stats.uid !== uid) {
    return {
      reason: `${path} is owned by uid ${stats.uid}, not by this user (uid ${uid}): its registry could name processes that are not ours`,
      fix: `Use a directory of your own: set SNAKEPIT_DATA_DIR (or the dataDir option) to one (a pool creates a missing one with mode 0700); if ${path} is meant to be yours, \`chown ${uid} ${path}\`.`
    }
  }
  const writable = stats.mode & 0o022
  if (writable !== 0) {
    const who = writable === 0o022 ? "its group and others" : writable === 0o002 ? "others" : "its group"
    return {
      reason: `${path} is writable by ${who} (mode ${(stats.mode & 0o7777).toString(8).padStart(4, "0")}): anyone who can write there can plant a registry, rows or links`,
      fix: `Check that nothing in ${path} was planted by someone else (or remove it: a pool recreates it), then \`chmod 700 ${path}\`; or set SNAKEPIT_DATA_DIR (or the dataDir option) to a private directory.`
    }
  }
  return undefined
}

/**
 * The data directory: the explicit option, else `SNAKEPIT_DATA_DIR`, else the per-user state
 * directory (`$XDG_STATE_HOME/snakepit` or `~/.local/state/snakepit`; on macOS
 * `~/Library/Application Support/snakepit`; on Windows `%LOCALAPPDATA%\snakepit`).
 */
export const resolveDataDir = (explicit: string | undefined): Effect.Effect<string, RegistryUnavailable> =>
  Effect.gen(function* () {
    if (explicit !== undefined && explicit !== "") return resolve(explicit)
    const fromEnv = yield* Config.option(Config.string("SNAKEPIT_DATA_DIR"))
    if (Option.isSome(fromEnv) && fromEnv.value.trim() !== "") return resolve(fromEnv.value)
    if (process.platform === "darwin") return join(homedir(), "Library", "Application Support", "snakepit")
    if (process.platform === "win32") {
      const local = yield* Config.option(Config.string("LOCALAPPDATA"))
      return join(
        Option.getOrElse(local, () => join(homedir(), "AppData", "Local")),
        "snakepit"
      )
    }
    const xdg = yield* Config.option(Config.string("XDG_STATE_HOME"))
    const base = Option.isSome(xdg) && xdg.value.trim() !== "" ? xdg.value : join(homedir(), ".local", "state")
    return join(resolve(base), "snakepit")
  }).pipe(
    Effect.mapError(
      (error) =>
        new RegistryUnavailable({
          dataDir: explicit ?? "(unresolved)",
          reason: `cannot resolve the data directory: ${error}`
        })
    )
  )

type Probe =
  | { readonly _tag: "Missing" }
  | { readonly _tag: "Healthy" }
  | { readonly _tag: "Corrupt"; readonly reason: string }
  | { readonly _tag: "Unusable"; readonly reason: string; readonly fix?: string; readonly error?: unknown }

const CORRUPT_CODES = new Set(["SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_CORRUPT_VTAB", "SQLITE_CORRUPT_SEQUENCE"])

const removeLinkFix = (path: string): string =>
  `Remove ${path} (a new registry is created at the next start), or set SNAKEPIT_DATA_DIR (or the dataDir option) to another directory; a link there is never followed.`

/**
 * What lstat says about `path`, without following a link: missing, a plain file of ours (one
 * link), or why it must not be opened.
 */
const inspectPath = (
  path: string
): { readonly _tag: "Missing" } | { readonly _tag: "File"; readonly stats: Stats } | Probe => {
  let stats: Stats
  try {
    stats = lstatSync(path)
  } catch (error) {
    if (codeOf(error) === "ENOENT") return { _tag: "Missing" }
    return { _tag: "Unusable", reason: `cannot stat ${path} (${describeError(error)})` }
  }
  if (stats.isSymbolicLink()) {
    let target = "?"
    try {
      target = readlinkSync(path)
    } catch {
      // unreadable link: said as "?"
    }
    return {
      _tag: "Unusable",
      reason: `${path} is a symbolic link (to ${target}): refusing to follow it`,
      fix: removeLinkFix(path)
    }
  }
  if (!stats.isFile()) return { _tag: "Corrupt", reason: `${path} is not a regular file` }
  const uid = process.getuid?.()
  if (uid !== undefined && stats.uid !== uid) {
    return {
      _tag: "Unusable",
      reason: `${path} is owned by uid ${stats.uid}, not by this user (uid ${uid})`,
      fix: removeLinkFix(path)
    }
  }
  if (stats.nlink > 1) {
    return {
      _tag: "Unusable",
      reason: `${path} has ${stats.nlink} hard links: another path names the same file`,
      fix: removeLinkFix(path)
    }
  }
  return { _tag: "File", stats }
}

/** Checks `file` and its companions with lstat, then opens it read-only just long enough to see whether SQLite accepts it. */
const probe = (file: string, busyTimeoutMs: number): Probe => {
  const found = inspectPath(file)
  if (found._tag !== "File") return found
  for (const suffix of COMPANIONS) {
    const companion = inspectPath(`${file}${suffix}`)
    if (companion._tag === "Corrupt")
      return { _tag: "Unusable", reason: companion.reason, fix: removeLinkFix(`${file}${suffix}`) }
    if (companion._tag !== "File" && companion._tag !== "Missing") return companion
  }
  let db: Database.Database | undefined
  try {
    db = new Database(file, { fileMustExist: true, readonly: true, timeout: busyTimeoutMs })
    const result = db.pragma("quick_check(1)", { simple: true })
    return result === "ok" ? { _tag: "Healthy" } : { _tag: "Corrupt", reason: `quick_check: ${String(result)}` }
  } catch (error) {
    const code = codeOf(error)
    if (code !== undefined && CORRUPT_CODES.has(code)) return { _tag: "Corrupt", reason: describeError(error) }
    return { _tag: "Unusable", reason: `cannot open ${file} (${describeError(error)})`, error }
  } finally {
    db?.close()
  }
}

const timestamp = (millis: number): string => new Date(millis).toISOString().replace(/[-:]/g, "").replace(".", "-")

/** Moves `file` (and its -wal/-shm companions) to `<file>.corrupt-<timestamp>`. */
const moveAside = (file: string, millis: number): string => {
  const target = `${file}.corrupt-${timestamp(millis)}`
  renameSync(file, target)
  for (const suffix of COMPANIONS) {
    try {
      renameSync(`${file}${suffix}`, `${target}${suffix}`)
    } catch (error) {
      if (codeOf(error) !== "ENOENT") throw error
    }
  }
  return target
}

/**
 * Sets mode 0600 on the database's -wal/-shm files where they exist as plain files of ours.
 * By path, never by opening them: closing a descriptor of a file drops every POSIX lock this
 * process holds on it, SQLite's included. Throws when one is a link or not ours.
 */
export const restrictCompanions = (file: string): void => {
  for (const suffix of COMPANIONS) {
    const found = inspectPath(`${file}${suffix}`)
    if (found._tag === "Missing") continue
    if (found._tag !== "File") throw new Error("reason" in found ? found.reason : `${file}${suffix} is not a file`)
    if ((found.stats.mode & 0o777) !== 0o600) chmodSync(`${file}${suffix}`, 0o600)
  }
}

/** Creates `file` with mode 0600, never through a link; an existing plain file is left as it is. */
const createFile = (file: string): void => {
  let fd: number
  try {
    fd = openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
  } catch (error) {
    if (codeOf(error) === "EEXIST") return // created meanwhile by another host: checked again below
    throw error
  }
  try {
    fchmodSync(fd, 0o600) // whatever the umask
  } finally {
    closeSync(fd)
  }
}

/**
 * Makes `<dataDir>/registry.db` ready to open: creates the directory (0700) if needed and checks
 * that it is private to this user, refuses a link at the database or its companions, moves a
 * corrupt or non-file database aside with a warning, creates the file with mode 0600, and sets
 * WAL mode (the first write: a full file system fails here, typed). Returns the database path.
 */
export const prepareDatabase = (dataDir: string, busyTimeoutMs: number): Effect.Effect<string, RegistryUnavailable> =>
  Effect.gen(function* () {
    const unavailable = (reason: string, fix?: string) =>
      new RegistryUnavailable(fix === undefined ? { dataDir, reason } : { dataDir, reason, fix })
    /** The failure of `what`: a full file system is said as such, with its fix. */
    const failure = (what: string, otherwise: string) => (error: unknown) => {
      const full = diskFull(error, dataDir)
      return full !== undefined
        ? unavailable(
            `its file system is full (${full}): ${what} failed (${describeError(error)})`,
            diskFullFix(dataDir)
          )
        : unavailable(`${otherwise} (${describeError(error)})`)
    }
    yield* Effect.try({
      try: () => mkdirSync(dataDir, { recursive: true, mode: 0o700 }),
      catch: failure("creating the data directory", "cannot create the data directory")
    })
    const problem = checkPrivateDirectory(dataDir, true)
    if (problem !== undefined) return yield* unavailable(problem.reason, problem.fix)
    yield* Effect.try({
      try: () => accessSync(dataDir, constants.W_OK | constants.X_OK),
      catch: (error) => unavailable(`the data directory is not a writable directory (${describeError(error)})`)
    })
    const file = join(dataDir, DATABASE_FILE)
    const found = probe(file, busyTimeoutMs)
    if (found._tag === "Unusable") {
      return yield* found.error === undefined
        ? unavailable(found.reason, found.fix)
        : failure(`opening ${file}`, `cannot open ${file}`)(found.error)
    }
    if (found._tag === "Corrupt") {
      const now = yield* Clock.currentTimeMillis
      const movedTo = yield* Effect.try({
        try: () => moveAside(file, now),
        catch: (error) => unavailable(`${found.reason}, and it cannot be moved aside (${describeError(error)})`)
      })
      yield* Effect.logWarning(
        `snakepit registry: the database was unreadable (${found.reason}); moved it to ${movedTo} and starting a new one`
      ).pipe(Effect.annotateLogs({ dataDir, movedTo }))
    }
    yield* Effect.try({
      try: () => {
        if (found._tag !== "Healthy") createFile(file)
        const created = inspectPath(file)
        if (created._tag !== "File") throw new Error("reason" in created ? created.reason : `${file} vanished`)
        if ((created.stats.mode & 0o777) !== 0o600) chmodSync(file, 0o600)
        restrictCompanions(file)
      },
      catch: failure(`creating ${file}`, `cannot open ${file} for writing with mode 0600`)
    })
    // WAL is a property of the file: set once here, where a failure (a full disk, typically) is
    // typed, rather than in the SQL client's constructor, where it would be a defect.
    yield* Effect.try({
      try: () => {
        const db = new Database(file, { fileMustExist: true, timeout: busyTimeoutMs })
        try {
          db.pragma("journal_mode = WAL")
        } finally {
          db.close()
        }
      },
      catch: failure(`opening ${file} in WAL mode`, `cannot open ${file} in WAL mode`)
    })
    return file
  })
