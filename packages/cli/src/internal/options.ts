/**
 * Options shared by several commands.
 *
 * @internal
 */
import { Options } from "@effect/cli"

/** `--data-dir DIR`: the registry's directory (default: SNAKEPIT_DATA_DIR, else the per-user state dir). */
export const dataDir = Options.text("data-dir").pipe(
  Options.withPseudoName("DIR"),
  Options.withDescription(
    "Directory of the process registry (registry.db). Default: SNAKEPIT_DATA_DIR, else the per-user state directory."
  ),
  Options.optional
)

/** `--json`: machine-readable output on stdout. */
export const json = Options.boolean("json").pipe(Options.withDescription("Print machine-readable JSON on stdout."))
