/**
 * The `snakepit` command line: `doctor`, `status` and `sweep` on @effect/cli, runnable
 * in-process with {@link run} (tests, other tools) or as the `snakepit` bin.
 *
 * Exit codes, for monitors: 0 when the command found nothing wrong (or did what it was asked),
 * 1 when it reported a problem (a doctor check FAILed, orphans, a host's control socket does not
 * answer or is stale, the registry cannot be used, the host refused the request), 2 for a usage
 * error, 3 when what it was asked about does not exist (no live host, no such worker or pool).
 *
 * @since 0.1.0
 */
import { readFileSync } from "node:fs"
import { Command, ValidationError } from "@effect/cli"
import type { CliApp } from "@effect/cli/CliApp"
import type { CommandExecutor } from "@effect/platform/CommandExecutor"
import { Console, Effect, Logger, LogLevel, Option, Schema } from "effect"
import * as Codegen from "./Codegen.js"
import * as Doctor from "./Doctor.js"
import * as Operate from "./Operate.js"
import * as Status from "./Status.js"
import * as Sweep from "./Sweep.js"
import * as Top from "./Top.js"

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
      "snakepit: diagnostics and live control of Snakepit pools of Python workers",
      "",
      "  snakepit doctor [--python PATH] [--adapter module:Class --python-path DIR] [--data-dir DIR] [--json]",
      "                                                              check everything a pool needs (and your adapter); say what to do",
      "  snakepit codegen --adapter module:Class --out FILE [--check]  typed client (Schemas, a service) from the tools' annotations",
      "  snakepit status [--data-dir DIR] [--json]                   runs and workers in the registry, orphans flagged",
      "  snakepit sweep  [--data-dir DIR] [--json]                   kill orphaned workers of dead runs",
      "  snakepit top    [--once] [--interval S] [--run RUNID] [--json]  live view of the running hosts' pools",
      "  snakepit restart <worker> | stop <worker>                   replace or stop a worker of a running host",
      "  snakepit resize <pool> <n | min..max>                       resize a pool of a running host",
      "  snakepit drain  <pool>                                      stop a pool taking calls; wait for its running calls",
      "  snakepit events [--follow] [--count N]                      the running hosts' pool events as they happen",
      "",
      "Every command takes --data-dir DIR and --json. Exit codes: 0 ok, 1 a problem was reported, 2 usage error, 3 not found.",
      "snakepit --help, or snakepit <command> --help, for every option."
    ].join("\n")
  )
).pipe(
  Command.withSubcommands([
    Doctor.command,
    Codegen.command,
    Status.command,
    Sweep.command,
    Top.command,
    Operate.restartCommand,
    Operate.stopCommand,
    Operate.resizeCommand,
    Operate.drainCommand,
    Operate.eventsCommand
  ])
)

const cli = Command.run(command, { name: "snakepit", version })

/** What the commands need from the platform: @effect/platform-node's `NodeContext.layer` provides all of it. */
export type Environment = CliApp.Environment | CommandExecutor

/** A process exit code: 0 nothing wrong, 1 a problem was reported, 2 usage error, 3 not found. */
export type ExitCode = 0 | 1 | 2 | 3

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
    Effect.catchTag("TargetNotFound", (error) => Effect.as(Console.error(error.message), 3 as ExitCode)),
    // @effect/cli has already printed the usage error and the help that goes with it.
    Effect.catchIf(ValidationError.isValidationError, () => Effect.succeed<ExitCode>(2)),
    Logger.withMinimumLogLevel(LogLevel.Warning)
  )
