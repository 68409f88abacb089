/**
 * Finding the hosts of a data dir through the registry, and talking to them through their
 * control sockets: every connection and every answer is bounded in time, so a dead host's
 * stale socket is reported, never waited on.
 *
 * @internal
 */
import type { RpcClientError } from "@effect/rpc"
import { Control } from "@snakepit/core"
import { ProcessInfo, Registry, type RegistryError, type RunRecord } from "@snakepit/registry"
import { Duration, Effect, Either, Schema } from "effect"

/** A run of the registry that recorded a control socket. */
export interface HostRun {
  readonly runId: string
  readonly ownerPid: number
  readonly socket: string
  /** The owner process is alive (and the run not ended). */
  readonly alive: boolean
}

/** The runs with a control socket: live hosts, and dead ones that left their socket behind. */
export const hostRuns: Effect.Effect<ReadonlyArray<HostRun>, RegistryError, Registry> = Effect.map(
  Effect.flatMap(Registry, (registry) => registry.runs),
  (runs) =>
    runs.flatMap((run: RunRecord) =>
      run.controlSocket === null
        ? []
        : [
            {
              runId: run.runId,
              ownerPid: run.ownerPid,
              socket: run.controlSocket,
              alive: run.endedAt === null && ProcessInfo.isOwnerAlive(run.ownerPid, run.ownerStartTime)
            }
          ]
    )
)

/** A host did not answer a request in time, or its connection broke. */
export class HostFailed extends Schema.TaggedError<HostFailed>()("HostFailed", {
  socket: Schema.String,
  detail: Schema.String
}) {
  override get message() {
    return `${this.socket}: ${this.detail}`
  }
}

const isClientError = (error: unknown): error is RpcClientError.RpcClientError =>
  typeof error === "object" && error !== null && (error as { readonly _tag?: unknown })._tag === "RpcClientError"

/** Bounds one request to a host; a broken connection is a `HostFailed`, like a timeout. */
export const bounded =
  (socket: string, timeout: Duration.DurationInput) =>
  <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, Exclude<E, RpcClientError.RpcClientError> | HostFailed> =>
    effect.pipe(
      Effect.mapError((error) =>
        isClientError(error)
          ? new HostFailed({ socket, detail: `the connection failed: ${error.message}` })
          : (error as Exclude<E, RpcClientError.RpcClientError>)
      ),
      Effect.timeoutFail({
        duration: timeout,
        onTimeout: () =>
          new HostFailed({ socket, detail: `no answer within ${Duration.format(Duration.decode(timeout))}` })
      })
    )

/** Runs `use` with a client of `socket`, closing the connection after; fails fast when the socket is unusable. */
export const withHost = <A, E>(
  socket: string,
  use: (client: Control.ControlClient) => Effect.Effect<A, E>,
  timeout: Duration.DurationInput = Duration.seconds(10)
): Effect.Effect<A, Exclude<E, RpcClientError.RpcClientError> | HostFailed | Control.ControlUnavailable> =>
  Effect.scoped(Effect.flatMap(Control.connect(socket), (client) => bounded(socket, timeout)(use(client))))

/** What one live host answered, or why it could not. */
export type HostAnswer<A> =
  | { readonly _tag: "Answered"; readonly run: HostRun; readonly value: A }
  | { readonly _tag: "Unreachable"; readonly run: HostRun; readonly reason: string; readonly detail: string }

/** Asks every host run (live or not) the same thing; a host that cannot answer says why. */
export const askAll = <A, E>(
  runs: ReadonlyArray<HostRun>,
  use: (client: Control.ControlClient) => Effect.Effect<A, E>
): Effect.Effect<ReadonlyArray<HostAnswer<A>>, Exclude<E, RpcClientError.RpcClientError>> =>
  Effect.forEach(
    runs,
    (run) =>
      Effect.either(withHost(run.socket, use)).pipe(
        Effect.flatMap((result): Effect.Effect<HostAnswer<A>, Exclude<E, RpcClientError.RpcClientError>> => {
          if (Either.isRight(result)) return Effect.succeed({ _tag: "Answered", run, value: result.right })
          const error = result.left
          if (error instanceof Control.ControlUnavailable) {
            return Effect.succeed({ _tag: "Unreachable", run, reason: error.reason, detail: error.message })
          }
          if (error instanceof HostFailed) {
            return Effect.succeed({ _tag: "Unreachable", run, reason: "error", detail: error.message })
          }
          return Effect.fail(error)
        })
      ),
    { concurrency: 4 }
  )
