/**
 * The data directory as the registry resolves it (option, `SNAKEPIT_DATA_DIR`, per-user default),
 * and concrete advice when it cannot be used.
 *
 * @internal
 */
import { accessSync, constants, statSync } from "node:fs"
import { dirname, resolve } from "node:path"
import { Registry, type RegistryUnavailable } from "@snakepit/registry"
import { Config, Effect, type Layer, Option } from "effect"
import { shellQuote } from "./format.js"

/** Where the data directory came from. */
export type DataDirSource = "--data-dir" | "SNAKEPIT_DATA_DIR" | "default"

/** Which of the three places decides the data directory, in the registry's order. */
export const dataDirSource = (explicit: string | undefined): Effect.Effect<DataDirSource> =>
  explicit !== undefined && explicit !== ""
    ? Effect.succeed("--data-dir")
    : Config.option(Config.string("SNAKEPIT_DATA_DIR")).pipe(
        Effect.orDie,
        Effect.map((env) => (Option.isSome(env) && env.value.trim() !== "" ? "SNAKEPIT_DATA_DIR" : "default"))
      )

/** The registry of `explicit` (else SNAKEPIT_DATA_DIR, else the default). The CLI registers no worker: no exit hook. */
export const registryLayer = (explicit: string | undefined): Layer.Layer<Registry, RegistryUnavailable> =>
  Registry.layer({ dataDir: explicit, exitHook: false })

const statOf = (path: string) => {
  try {
    return statSync(path)
  } catch {
    return undefined
  }
}

const writable = (path: string): boolean => {
  try {
    accessSync(path, constants.W_OK | constants.X_OK)
    return true
  } catch {
    return false
  }
}

/** The nearest existing ancestor of `path` is a file, not a directory. */
export const underAFile = (path: string): boolean => {
  for (let dir = dirname(resolve(path)); ; dir = dirname(dir)) {
    const stats = statOf(dir)
    if (stats !== undefined) return !stats.isDirectory()
    if (dirname(dir) === dir) return false
  }
}

/** The `--data-dir` argument that repeats the operator's choice in a suggested command. */
export const dataDirArgument = (explicit: string | undefined): string =>
  explicit !== undefined && explicit !== "" ? ` --data-dir ${shellQuote(explicit)}` : ""

/**
 * What to do when the registry in `dataDir` cannot be opened: names the path that is in the
 * way (a file where a directory must be, a directory this user cannot write) when there is one.
 */
export const dataDirFix = (dataDir: string, reason: string): string => {
  const choose = "or choose another directory with --data-dir or SNAKEPIT_DATA_DIR"
  const target = resolve(dataDir)
  for (let path = target; ; path = dirname(path)) {
    const stats = statOf(path)
    if (stats !== undefined) {
      if (!stats.isDirectory()) {
        return path === target
          ? `${path} is a file, not a directory: move it away, ${choose}`
          : `${path} is a file, so ${target} cannot be created under it: move it away, ${choose}`
      }
      if (!writable(path)) {
        const uid = process.getuid?.()
        return `${path} is not writable by this user${uid === undefined ? "" : ` (uid ${uid})`}: fix its owner or mode (chown/chmod), ${choose}`
      }
      break
    }
    if (dirname(path) === path) break
  }
  return `${target}/registry.db cannot be opened (${reason}): move the file aside, ${choose}`
}
