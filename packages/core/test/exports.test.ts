/**
 * `internal/` is sealed: no package's `exports` lets another package import its internal modules.
 */
import { execFileSync } from "node:child_process"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"

const cliDir = fileURLToPath(new URL("../../cli/", import.meta.url))

/** How Node resolves `specifier` from the cli package (a consumer of every other package). */
const resolveFromCli = (specifier: string): string => {
  const script = `try { import.meta.resolve(${JSON.stringify(specifier)}); console.log("resolved") } catch (e) { console.log(e.code) }`
  return execFileSync(process.execPath, ["--input-type=module", "-e", script], { cwd: cliDir, encoding: "utf8" }).trim()
}

describe("package exports", () => {
  it("seal internal/ in every package", () => {
    for (const specifier of [
      "@snakepit/core/internal/pool.js",
      "@snakepit/core/internal/poolState",
      "@snakepit/registry/internal/database",
      "@snakepit/testkit/internal/x",
      "@snakepit/grpc/internal/x"
    ]) {
      expect([specifier, resolveFromCli(specifier)]).toEqual([specifier, "ERR_PACKAGE_PATH_NOT_EXPORTED"])
    }
    expect(resolveFromCli("@snakepit/core")).toBe("resolved")
  })
})
