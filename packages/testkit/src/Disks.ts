/**
 * A small file system that can be filled, for tests of what a full disk does: a tmpfs of a few
 * hundred kilobytes mounted for the test's scope (root, or CAP_SYS_ADMIN, is needed; a test
 * skips with the reason where mounting is not allowed).
 *
 * @since 0.1.0
 */
import { execFileSync } from "node:child_process"
import { closeSync, mkdtempSync, openSync, rmdirSync, writeSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect, type Scope } from "effect"

/**
 * A mounted tmpfs, or why it could not be mounted.
 *
 * @since 0.1.0
 * @category models
 */
export type SmallFileSystem =
  | { readonly _tag: "Mounted"; readonly path: string }
  | { readonly _tag: "Unavailable"; readonly reason: string }

const quietly = (command: string, args: ReadonlyArray<string>): string | undefined => {
  try {
    execFileSync(command, [...args], { stdio: ["ignore", "ignore", "pipe"], encoding: "utf8", timeout: 10_000 })
    return undefined
  } catch (error) {
    return String((error as { stderr?: unknown }).stderr ?? error).trim() || String(error)
  }
}

/**
 * Mounts a tmpfs of `sizeKb` kilobytes (mode 0700) on a fresh directory for the scope, and
 * unmounts it (lazily, if something still holds it) and removes the directory after.
 *
 * @since 0.1.0
 * @category constructors
 */
export const tmpfs = (sizeKb: number): Effect.Effect<SmallFileSystem, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync((): SmallFileSystem => {
      if (process.platform !== "linux") return { _tag: "Unavailable", reason: "tmpfs mounts are Linux-only" }
      const path = mkdtempSync(join(tmpdir(), "snakepit-disk-"))
      const failed = quietly("mount", ["-t", "tmpfs", "-o", `size=${sizeKb}k,mode=0700`, "tmpfs", path])
      if (failed === undefined) return { _tag: "Mounted", path }
      rmdirSync(path)
      return { _tag: "Unavailable", reason: `cannot mount a tmpfs here (${failed})` }
    }),
    (disk) =>
      Effect.sync(() => {
        if (disk._tag !== "Mounted") return
        if (quietly("umount", [disk.path]) !== undefined) quietly("umount", ["-l", disk.path])
        rmdirSync(disk.path)
      })
  )

/**
 * Writes a file in `dir` until the file system says ENOSPC (bounded: at most `limitMb` MB).
 * Returns the bytes written.
 *
 * @since 0.1.0
 * @category operations
 */
export const fill = (dir: string, limitMb = 64): number => {
  const fd = openSync(join(dir, "filler"), "w")
  const chunk = Buffer.alloc(4096)
  let written = 0
  try {
    while (written < limitMb * 1024 * 1024) written += writeSync(fd, chunk)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOSPC") throw error
  } finally {
    closeSync(fd)
  }
  return written
}
