/**
 * Thread limits for the numeric libraries inside each worker. Many workers on few cores
 * must not each start a thread per core, so every limit defaults to 1; a partial override
 * merges with the defaults (LESSONS #4).
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import { ConfigError } from "./errors.js"

/** One thread count per library. */
export interface ThreadLimits {
  readonly omp: number
  readonly openblas: number
  readonly mkl: number
  readonly numexpr: number
  readonly veclib: number
}

/** One thread each. */
export const defaults: ThreadLimits = { omp: 1, openblas: 1, mkl: 1, numexpr: 1, veclib: 1 }

/** The environment variable each limit is passed as. */
export const envNames: { readonly [K in keyof ThreadLimits]: string } = {
  omp: "OMP_NUM_THREADS",
  openblas: "OPENBLAS_NUM_THREADS",
  mkl: "MKL_NUM_THREADS",
  numexpr: "NUMEXPR_NUM_THREADS",
  veclib: "VECLIB_MAXIMUM_THREADS"
}

/** Merges `overrides` into the defaults, rejecting anything but positive integers. */
export const resolve = (overrides: Partial<ThreadLimits> = {}): Effect.Effect<ThreadLimits, ConfigError> =>
  Effect.gen(function* () {
    for (const [key, value] of Object.entries(overrides)) {
      if (!Object.hasOwn(envNames, key)) {
        return yield* new ConfigError({
          key: `threadLimits.${key}`,
          value: String(value),
          reason: `unknown library; expected one of ${Object.keys(envNames).join(", ")}`
        })
      }
      if (value !== undefined && !(Number.isInteger(value) && value > 0)) {
        return yield* new ConfigError({
          key: `threadLimits.${key}`,
          value: String(value),
          reason: "must be a positive integer"
        })
      }
    }
    return { ...defaults, ...overrides } as ThreadLimits
  })

/** The environment variables for `limits`. */
export const toEnv = (limits: ThreadLimits): Record<string, string> =>
  Object.fromEntries(
    (Object.keys(envNames) as Array<keyof ThreadLimits>).map((key) => [envNames[key], String(limits[key])])
  )
