/**
 * apache-arrow, loaded on first need: it costs a few hundred milliseconds and several MB to
 * import, which programs that never see a table should not pay.
 *
 * Where node can `require` an ES module (20.19 and later), the module is loaded synchronously the
 * first time a value needs it, from the same file `import("apache-arrow")` resolves to: one
 * module instance, so a user's `Table` is ours too (no dual-package hazard). On older nodes,
 * and where `import.meta.resolve` is missing (vite-node), `load` imports it while each host's
 * first worker starts.
 */
import { realpathSync } from "node:fs"
import { createRequire } from "node:module"
import { fileURLToPath } from "node:url"
import { Effect } from "effect"

type Arrow = typeof import("apache-arrow")

let arrow: Arrow | undefined
let loading: Promise<Arrow> | undefined

// `import.meta.resolve` finds the file an `import` would load; vite-node (the tests) lacks it.
const requiresEsm =
  (process.features as { readonly require_module?: boolean }).require_module === true &&
  typeof import.meta.resolve === "function"

/** Imports apache-arrow while a worker starts, where it cannot be loaded on first need. */
export const load: Effect.Effect<void> = Effect.suspend(() =>
  arrow !== undefined || requiresEsm
    ? Effect.void
    : Effect.promise(() => {
        loading ??= import("apache-arrow").then((module) => {
          arrow = module
          return module
        })
        return loading
      })
)

/** The module, loaded now if it can be and is not yet; undefined only on a node too old for that before `load`. */
export const get = (): Arrow | undefined => {
  if (arrow === undefined && requiresEsm) {
    // Its real path, as `import` would load it: a path through the package manager's symlinks
    // (what `import.meta.resolve` gave in one bench process) hides the package's own
    // dependencies (tslib) from it under pnpm.
    const entry = realpathSync(fileURLToPath(import.meta.resolve("apache-arrow")))
    arrow = createRequire(import.meta.url)(entry) as Arrow
  }
  return arrow
}

/**
 * Whether `value` is an apache-arrow `Table`. Cheap for anything else: only an object with a
 * table's shape makes it look at the module (and load it, when it must be a user's table).
 */
export const isTable = (value: unknown): value is InstanceType<Arrow["Table"]> => {
  if (typeof value !== "object" || value === null) return false
  const shaped = value as { readonly schema?: unknown; readonly batches?: unknown }
  if (typeof shaped.schema !== "object" || !Array.isArray(shaped.batches)) return false
  const module = get()
  return module !== undefined && value instanceof module.Table
}
