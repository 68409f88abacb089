/**
 * @snakepit/cluster: Snakepit beyond one machine. Sessions are @effect/cluster entities keyed
 * by the session id; the runner that owns a session's shard serves it on its local pool.
 *
 * @since 0.1.0
 */

/** The cluster's own typed errors (defined in @snakepit/core, so the `Snakepit` service can carry them). */
export { EntityMoved, RunnerUnreachable } from "@snakepit/core"
/** Options of a cluster member, resolved from code and `SNAKEPIT_CLUSTER_*` through Effect `Config`. */
export * as ClusterOptions from "./ClusterOptions.js"
/** `SnakepitCluster.layer` (a runner), `layerClient`, `sqlite`, and the `SnakepitCluster` service. */
export * as SnakepitCluster from "./SnakepitCluster.js"
