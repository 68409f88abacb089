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

/** `--run RUNID`: act on one host of the data dir (default: every live one). */
export const run = Options.text("run").pipe(
  Options.withPseudoName("RUNID"),
  Options.withDescription("The run id of one host (see `snakepit status`). Default: every live host of the data dir."),
  Options.optional
)
