/**
 * Finding, checking and preparing the registry database file before the SQL client opens it.
 *
 * @internal
 */
import { accessSync, chmodSync, closeSync, constants, mkdirSync, openSync, renameSync, statSync } from "node:fs"
import { homedir } from "node:os"
import { join, resolve } from "node:path"
import Database from "better-sqlite3"
import { Clock, Config, Effect, Option } from "effect"
import { RegistryUnavailable } from "../errors.js"

/** The database file's name inside the data directory. */
export const DATABASE_FILE = "registry.db"

const describeError = (error: unknown): string => {
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code
    return code !== undefined && !error.message.startsWith(code) ? `${code}: ${error.message}` : error.message
  }
  return String(error)
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
  | { readonly _tag: "Unusable"; readonly reason: string }

const CORRUPT_CODES = new Set(["SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_CORRUPT_VTAB", "SQLITE_CORRUPT_SEQUENCE"])

/** Opens the file read-only just long enough to see whether SQLite accepts it. */
const probe = (file: string, busyTimeoutMs: number): Probe => {
  let stats: ReturnType<typeof statSync>
  try {
    stats = statSync(file)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return { _tag: "Missing" }
    return { _tag: "Unusable", reason: `cannot stat ${file} (${describeError(error)})` }
  }
  if (!stats.isFile()) return { _tag: "Corrupt", reason: `${file} is not a regular file` }
  let db: Database.Database | undefined
  try {
    db = new Database(file, { fileMustExist: true, timeout: busyTimeoutMs })
    const result = db.pragma("quick_check(1)", { simple: true })
    return result === "ok" ? { _tag: "Healthy" } : { _tag: "Corrupt", reason: `quick_check: ${String(result)}` }
  } catch (error) {
    const code = (error as { code?: unknown }).code
    if (typeof code === "string" && CORRUPT_CODES.has(code)) return { _tag: "Corrupt", reason: describeError(error) }
    return { _tag: "Unusable", reason: `cannot open ${file} (${describeError(error)})` }
  } finally {
    db?.close()
  }
}

const timestamp = (millis: number): string => new Date(millis).toISOString().replace(/[-:]/g, "").replace(".", "-")

/** Moves `file` (and its -wal/-shm companions) to `<file>.corrupt-<timestamp>`. */
const moveAside = (file: string, millis: number): string => {
  const target = `${file}.corrupt-${timestamp(millis)}`
  renameSync(file, target)
  for (const suffix of ["-wal", "-shm"]) {
    try {
      renameSync(`${file}${suffix}`, `${target}${suffix}`)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error
    }
  }
  return target
}

/** Sets mode 0600 on the database's -wal/-shm files where they exist. */
export const restrictCompanions = (file: string): void => {
  for (const suffix of ["-wal", "-shm"]) {
    try {
      chmodSync(`${file}${suffix}`, 0o600)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error
    }
  }
}

/**
 * Makes `<dataDir>/registry.db` ready to open: creates the directory (0700) if needed, moves
 * a corrupt or non-file database aside with a warning, and creates the file with mode 0600.
 * Returns the database path.
 */
export const prepareDatabase = (dataDir: string, busyTimeoutMs: number): Effect.Effect<string, RegistryUnavailable> =>
  Effect.gen(function* () {
    const unavailable = (reason: string) => new RegistryUnavailable({ dataDir, reason })
    yield* Effect.try({
      try: () => mkdirSync(dataDir, { recursive: true, mode: 0o700 }),
      catch: (error) => unavailable(`cannot create the data directory (${describeError(error)})`)
    })
    yield* Effect.try({
      try: () => {
        if (!statSync(dataDir).isDirectory()) throw new Error("not a directory")
        accessSync(dataDir, constants.W_OK | constants.X_OK)
      },
      catch: (error) => unavailable(`the data directory is not a writable directory (${describeError(error)})`)
    })
    const file = join(dataDir, DATABASE_FILE)
    const found = probe(file, busyTimeoutMs)
    if (found._tag === "Unusable") return yield* unavailable(found.reason)
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
        closeSync(openSync(file, "a", 0o600))
        chmodSync(file, 0o600)
        restrictCompanions(file)
      },
      catch: (error) => unavailable(`cannot open ${file} for writing with mode 0600 (${describeError(error)})`)
    })
    return file
  })
