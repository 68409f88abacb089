/**
 * @snakepit/core: Python workers as Scope resources, typed errors, thread limits.
 *
 * @since 0.1.0
 */

/** Typed errors (`_tag`s callers match on). */
export * from "./errors.js"
/** Thread limits for numeric libraries in workers. */
export * as ThreadLimits from "./ThreadLimits.js"
/** One Python worker as a Scope resource. */
export * as Worker from "./Worker.js"
