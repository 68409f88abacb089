/**
 * Typed failures of the `snakepit` commands.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/**
 * A command ran and found problems, which it has already printed with what to do (a doctor
 * check that FAILed, a registry that cannot be opened). The command line exits with code 1.
 */
export class DiagnosticFailure extends Schema.TaggedError<DiagnosticFailure>()("DiagnosticFailure", {
  /** The command that failed: "doctor", "status" or "sweep". */
  command: Schema.String,
  /** What failed, one short line each (the doctor's failed check names, or the registry problem). */
  problems: Schema.Array(Schema.String)
}) {
  override get message(): string {
    return `snakepit ${this.command} found ${this.problems.length} problem(s): ${this.problems.join("; ")}`
  }
}

/**
 * What a command was asked to act on does not exist: no live host in the data dir, no such
 * worker or pool in any of them. The command line exits with code 3.
 */
export class TargetNotFound extends Schema.TaggedError<TargetNotFound>()("TargetNotFound", {
  command: Schema.String,
  /** What was looked for, e.g. `worker default-1.1` or `pool gpu`. */
  target: Schema.String,
  /** Where it was looked for, one line. */
  detail: Schema.String
}) {
  override get message(): string {
    return `snakepit ${this.command}: no ${this.target} (${this.detail})`
  }
}
