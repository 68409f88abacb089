/**
 * Typed failures of a gRPC call, one tag per status a caller can act on.
 *
 * @since 0.1.0
 */
import { type ServiceError, status as Status } from "@grpc/grpc-js"
import { Schema } from "effect"

const fields = {
  /** The RPC, e.g. "ExecuteTool". */
  method: Schema.String,
  /** The numeric gRPC status code. */
  code: Schema.Number,
  /** The status details sent by the peer or produced by grpc-js. */
  details: Schema.String
}

/** The peer is not reachable: connection refused, reset, or the process went away. */
export class GrpcUnavailable extends Schema.TaggedError<GrpcUnavailable>()("GrpcUnavailable", fields) {
  override get message() {
    return `${this.method}: peer unavailable (${this.details})`
  }
}

/** The call's gRPC deadline passed before the peer answered. */
export class GrpcDeadlineExceeded extends Schema.TaggedError<GrpcDeadlineExceeded>()("GrpcDeadlineExceeded", fields) {
  override get message() {
    return `${this.method}: deadline exceeded (${this.details})`
  }
}

/** A message was larger than the configured maximum (RESOURCE_EXHAUSTED). */
export class GrpcMessageTooLarge extends Schema.TaggedError<GrpcMessageTooLarge>()("GrpcMessageTooLarge", fields) {
  override get message() {
    return `${this.method}: message too large (${this.details})`
  }
}

/** Any other non-OK status (INTERNAL, UNIMPLEMENTED, CANCELLED by the peer, ...). */
export class GrpcFailure extends Schema.TaggedError<GrpcFailure>()("GrpcFailure", {
  ...fields,
  /** The status name, e.g. "INTERNAL". */
  codeName: Schema.String
}) {
  override get message() {
    return `${this.method}: ${this.codeName} (${this.details})`
  }
}

/** The client could not connect within its connect timeout. */
export class GrpcConnectTimeout extends Schema.TaggedError<GrpcConnectTimeout>()("GrpcConnectTimeout", {
  address: Schema.String,
  timeoutMs: Schema.Number,
  details: Schema.String
}) {
  override get message() {
    return `could not connect to ${this.address} within ${this.timeoutMs} ms (${this.details})`
  }
}

/** Every failure of a call on an established client. */
export type GrpcError = GrpcUnavailable | GrpcDeadlineExceeded | GrpcMessageTooLarge | GrpcFailure

/** Maps a grpc-js status error to its typed error. */
export const fromServiceError = (
  method: string,
  error: Pick<ServiceError, "code" | "details" | "message">
): GrpcError => {
  const props = { method, code: error.code, details: error.details || error.message }
  switch (error.code) {
    case Status.UNAVAILABLE:
      return new GrpcUnavailable(props)
    case Status.DEADLINE_EXCEEDED:
      return new GrpcDeadlineExceeded(props)
    case Status.RESOURCE_EXHAUSTED:
      return new GrpcMessageTooLarge(props)
    default:
      return new GrpcFailure({ ...props, codeName: Status[error.code] ?? String(error.code) })
  }
}
