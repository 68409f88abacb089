/**
 * Host tools for gRPC workers: the `HostTools` service behind @snakepit/grpc's `HostBridgeServer`
 * (loopback, per-run secret). Workers on the local transport call host tools over their own
 * channel instead and need none of this.
 */
import { HostBridgeServer, type Proto } from "@snakepit/grpc"
import { Effect, type Scope } from "effect"
import { PoolStartError } from "../../errors.js"
import type { HostToolsService } from "../../HostTool.js"
import * as Codec from "../codec.js"

const KINDS: Record<string, Proto.ToolError_Kind> = {
  python_exception: 1,
  tool_not_found: 2,
  invalid_arguments: 3,
  unserializable_result: 4
}

const failure = (kind: string, type: string, message: string): Proto.CallHostToolResponse => ({
  outcome: {
    $case: "error",
    value: { kind: KINDS[kind] ?? 1, type, message, traceback: "", availableTools: [], path: "" }
  },
  blobs: [],
  tagged: false
})

const handler =
  (tools: HostToolsService) =>
  (request: Proto.CallHostToolRequest): Effect.Effect<Proto.CallHostToolResponse> =>
    Effect.suspend(() => {
      let args: unknown
      try {
        args = request.argsJson.length === 0 ? {} : JSON.parse(request.argsJson.toString("utf8"))
        if (request.tagged) args = Codec.decodeTagged(args, request.blobs)
      } catch (error) {
        return Effect.succeed(failure("invalid_arguments", "SyntaxError", `argsJson is not valid: ${String(error)}`))
      }
      return Effect.map(
        tools.call({ tool: request.tool, args, session: request.sessionId, workerId: request.workerId }),
        (outcome): Proto.CallHostToolResponse =>
          outcome._tag === "Success"
            ? {
                outcome: { $case: "resultJson", value: Buffer.from(outcome.value.json) },
                blobs: outcome.value.blobs.map((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength)),
                tagged: outcome.value.tagged
              }
            : {
                outcome: {
                  $case: "error",
                  value: {
                    kind: KINDS[outcome.failure.kind] ?? 1,
                    type: outcome.failure.type,
                    message: outcome.failure.message,
                    traceback: outcome.failure.traceback,
                    availableTools: [...outcome.failure.available],
                    path: ""
                  }
                },
                blobs: [],
                tagged: false
              }
      )
    })

/** Serves `tools` to gRPC workers for the scope's lifetime; returns where, and the secret. */
export const serve = (
  tools: HostToolsService
): Effect.Effect<{ readonly address: string; readonly secret: string }, PoolStartError, Scope.Scope> =>
  HostBridgeServer.make({
    handler: handler(tools),
    listTools: () =>
      tools.tools.map((spec) => ({
        name: spec.name,
        description: spec.description,
        streaming: false,
        parameters: spec.parameters.map((p) => ({ ...p, defaultJson: Buffer.alloc(0) })),
        typesJson: ""
      }))
  }).pipe(
    Effect.map((server) => ({ address: server.address, secret: server.secret })),
    Effect.mapError(
      (e) => new PoolStartError({ pool: "*", detail: `the host-tool bridge could not start: ${e.message}`, causes: [] })
    )
  )
