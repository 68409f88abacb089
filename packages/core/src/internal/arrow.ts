/**
 * apache-arrow, loaded once on first need: it costs a few hundred milliseconds to import, which
 * programs that never see a table should not pay. `load` runs while a worker starts, so the
 * module is there before any value can need it; the codec only reads `loaded()`.
 */
import { Effect } from "effect"

type Arrow = typeof import("apache-arrow")

let arrow: Arrow | undefined
let loading: Promise<Arrow> | undefined

/** Imports apache-arrow (once per process). */
export const load: Effect.Effect<void> = Effect.suspend(() =>
  arrow !== undefined
    ? Effect.void
    : Effect.promise(() => {
        loading ??= import("apache-arrow").then((module) => {
          arrow = module
          return module
        })
        return loading
      })
)

/** The module once `load` finished, else undefined. */
export const loaded = (): Arrow | undefined => arrow
