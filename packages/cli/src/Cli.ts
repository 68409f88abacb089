/**
 * The `snakepit` command line: `doctor`, `status` and `sweep` on @effect/cli, runnable
 * in-process with {@link run} (tests, other tools) or as the `snakepit` bin.
 *
 * Exit codes: 0 when the command found nothing wrong, 1 when it reported a problem (a doctor
 * check FAILed, the registry cannot be used), 2 for a usage error.
 *
 * @since 0.1.0
 */
import { readFileSync } from "node:fs"
import { Command, ValidationError } from "@effect/cli"
import type { CliApp } from "@effect/cli/CliApp"
import type { CommandExecutor } from "@effect/platform/CommandExecutor"
import { Console, Effect, Logger, LogLevel, Option, Schema } from "effect"
import * as Doctor from "./Doctor.js"
import * as Status from "./Status.js"
import * as Sweep from "./Sweep.js"

/** This package's version, from its package.json (next to both `src/` and `dist/`). */
export const version: string = Option.getOrElse(
  Schema.decodeUnknownOption(Schema.parseJson(Schema.Struct({ version: Schema.String })))(
    readFileSync(new URL("../package.json", import.meta.url), "utf8")
  ).pipe(Option.map((manifest) => manifest.version)),
  () => "0.0.0"
)

/** The root command; alone, it lists the subcommands. */
export const command = Command.make("snakepit", {}, () =>
  Console.log(
    [
      "snakepit: diagnostics for Snakepit pools of Python workers",
      "",
      "  snakepit doctor [--python PATH] [--adapter module:Class --python-path DIR] [--data-dir DIR] [--json]",
      "                                                              check everything a pool needs (and your adapter); say what to do",
      "  snakepit status [--data-dir DIR] [--json]                   runs and workers in the registry, orphans flagged",
      "  snakepit sweep  [--data-dir DIR] [--json]                   kill orphaned workers of dead runs",
      "",
      "snakepit --help, or snakepit <command> --help, for every option."
    ].join("\n")
  )
).pipe(Command.withSubcommands([Doctor.command, Status.command, Sweep.command]))

const cli = Command.run(command, { name: "snakepit", version })

/** What the commands need from the platform: @effect/platform-node's `NodeContext.layer` provides all of it. */
export type Environment = CliApp.Environment | CommandExecutor

/** A process exit code: 0 nothing wrong, 1 a problem was reported, 2 usage error. */
export type ExitCode = 0 | 1 | 2

/**
 * Runs the command line `argv` (as `process.argv`: the first two entries are node and the
 * script) and returns its exit code. Output goes through Effect's `Console` (provide another
 * with `Effect.withConsole` to capture it). Logs below Warning are hidden unless `--log-level`
 * asks for them. Unexpected defects are not turned into exit codes: they fail the effect.
 */
export const run = (argv: ReadonlyArray<string>): Effect.Effect<ExitCode, never, Environment> =>
  cli(argv).pipe(
    Effect.as<ExitCode>(0),
    Effect.catchTag("DiagnosticFailure", () => Effect.succeed<ExitCode>(1)),
    // @effect/cli has already printed the usage error and the help that goes with it.
    Effect.catchIf(ValidationError.isValidationError, () => Effect.succeed<ExitCode>(2)),
    Logger.withMinimumLogLevel(LogLevel.Warning)
  )
