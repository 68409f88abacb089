/**
 * @snakepit/grpc: the wire protocol's generated types and an Effect client for the worker bridge.
 *
 * @since 0.1.0
 */

/** The worker bridge client (`BridgeClient.make`). */
export * as BridgeClient from "./BridgeClient.js"
/** Typed gRPC failures. */
export * from "./GrpcError.js"
/** Generated wire types (ts-proto) from proto/snakepit_bridge.proto. */
export * as Proto from "./generated/snakepit_bridge.js"
/** The host side of host tools: a gRPC server Python workers call back into (`HostBridgeServer.make`). */
export * as HostBridgeServer from "./HostBridgeServer.js"
