/**
 * Typed failures of the registry. Each carries what a person needs to act.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/**
 * The registry database cannot be opened or created: the data directory is missing and
 * cannot be made, is not writable, is not private (writable by others, or owned by another
 * user), its file system is full, or the database file is a link or cannot be opened for a
 * reason other than corruption (a corrupt file is moved aside and recreated instead).
 */
export class RegistryUnavailable extends Schema.TaggedError<RegistryUnavailable>()("RegistryUnavailable", {
  dataDir: Schema.String,
  reason: Schema.String,
  /** What to do, when the registry knows better than the generic advice. */
  fix: Schema.optional(Schema.String)
}) {
  override get message(): string {
    return (
      `Snakepit's process registry is unavailable in ${this.dataDir}: ${this.reason}. ` +
      (this.fix ??
        "Set SNAKEPIT_DATA_DIR (or the dataDir option) to a writable directory, or fix the permissions of this one.")
    )
  }
}

/** A registry operation failed after the database was open (an SQL or decoding failure). */
export class RegistryError extends Schema.TaggedError<RegistryError>()("RegistryError", {
  operation: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `registry ${this.operation} failed: ${this.reason}`
  }
}

/** No worker row has this id (it was never reserved, or it was already removed). */
export class WorkerNotFound extends Schema.TaggedError<WorkerNotFound>()("WorkerNotFound", {
  workerId: Schema.String
}) {
  override get message(): string {
    return `no registry row for worker ${this.workerId}: reserve it before activating it`
  }
}
