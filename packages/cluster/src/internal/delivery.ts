/**
 * At most once, as on a local pool. @effect/cluster re-sends a volatile message whose runner
 * became unreachable, until its shard has moved; that is right for a message that never left
 * this process, and wrong for one the dead runner may already have started (a tool would run
 * twice). So the socket records which requests were written, and when the runner then fails,
 * those calls settle at once with `RunnerUnreachable`; the others wait for the move.
 */
import {
  ClusterSchema,
  Message,
  type MessageStorage,
  Reply,
  Runners,
  type ShardingConfig,
  Snowflake
} from "@effect/cluster"
import type { Rpc, RpcClient } from "@effect/rpc"
import { RunnerUnreachable } from "@snakepit/core"
import { Context, Effect, Exit, Layer } from "effect"

/** Request ids (as their wire strings) written to a runner's socket and not yet settled. */
export type Written = Set<string>

/** The request id inside a Runners `Effect`/`Stream` RPC, as written on the wire. */
const requestIdOf = (request: unknown): string | undefined => {
  const payload = (request as { readonly payload?: { readonly request?: { readonly requestId?: unknown } } }).payload
  const id = payload?.request?.requestId
  return typeof id === "string" ? id : undefined
}

/** Wraps a runner connection so that every request it writes is recorded until it settles. */
export const recordWrites = (written: Written, protocol: RpcClient.Protocol["Type"]): RpcClient.Protocol["Type"] => ({
  ...protocol,
  send: (request, transferables) =>
    Effect.tap(protocol.send(request, transferables), () => {
      if (request._tag !== "Request") return
      const id = requestIdOf(request)
      if (id !== undefined) written.add(id)
    })
})

/** `Runners` over the cluster's sockets, settling written-then-lost calls with `RunnerUnreachable`. */
export const layerRunners = (
  written: Written
): Layer.Layer<
  Runners.Runners,
  never,
  Runners.RpcClientProtocol | MessageStorage.MessageStorage | ShardingConfig.ShardingConfig
> =>
  Layer.scoped(
    Runners.Runners,
    Effect.gen(function* () {
      const inner = yield* Runners.makeRpc
      const snowflakes = yield* Snowflake.Generator
      return Runners.Runners.of({
        ...inner,
        send: (options) => {
          const message = options.message
          if (
            !(message instanceof Message.OutgoingRequest) ||
            Context.get((message.rpc as unknown as Rpc.AnyWithProps).annotations, ClusterSchema.Persisted)
          ) {
            return inner.send(options)
          }
          const id = String(message.envelope.requestId)
          const runner = `${options.address.host}:${options.address.port}`
          const tool = (message.envelope.payload as { readonly tool?: unknown } | undefined)?.tool
          return inner.send(options).pipe(
            Effect.catchTag("RunnerUnavailable", (error) =>
              written.has(id)
                ? message.respond(
                    new Reply.WithExit({
                      id: snowflakes.unsafeNext(),
                      requestId: message.envelope.requestId,
                      exit: Exit.fail(
                        new RunnerUnreachable({
                          runner,
                          tool: typeof tool === "string" ? tool : null,
                          detail:
                            "the runner was lost while serving the call (it may have run in part); the call is not repeated elsewhere"
                        })
                      ) as never
                    })
                  )
                : Effect.fail(error)
            ),
            Effect.ensuring(Effect.sync(() => written.delete(id)))
          )
        }
      })
    })
  ).pipe(Layer.provide(Snowflake.layerGenerator))
