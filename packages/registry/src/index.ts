/**
 * @snakepit/registry: run ids now; the SQLite process registry and orphan sweep build on them.
 *
 * @since 0.1.0
 */

/** Run ids, one per host process. */
export * as RunId from "./RunId.js"
