/**
 * @snakepit/core: run Python tools on pools of workers, from Effect or from Promises.
 *
 * @since 0.1.0
 */

/** The control API of a running host (`@effect/rpc`): `Control.ControlRpcs`, `Control.connect(socket)`. */
export * as Control from "./Control.js"
/** Promise facade: `createPool()`. */
export * from "./createPool.js"
/** For diagnostics tools: the interpreter search step by step, the worker runtime's location, option resolution. */
export * as Diagnostics from "./Diagnostics.js"
/** Typed errors (`_tag`s callers match on). */
export * from "./errors.js"
/** Host tools: TypeScript tools Python workers call back into (`HostTool.make`, `HostTools.layer`). */
export * from "./HostTool.js"
/** Effect Metrics of every pool, tagged with `pool`. */
export * as SnakepitMetrics from "./Metrics.js"
/** `NDArray`: numpy arrays on the host, their bytes carried raw. */
export * from "./NDArray.js"
/** Pool options. */
export * from "./PoolOptions.js"
/** What an operator sees of a running pool: its report (workers in detail, latency) and its events, as Schemas. */
export * from "./PoolReport.js"
/** A configured Python command resolved: its real executable, kind of environment, missing modules, install hint. */
export * as PythonEnvironment from "./PythonEnvironment.js"
/** The `Snakepit` service and its types. */
export * from "./Snakepit.js"
/** `SnakepitPool.layer(options)`. */
export * as SnakepitPool from "./SnakepitPool.js"
/** Thread limits for numeric libraries in workers. */
export * as ThreadLimits from "./ThreadLimits.js"
/** Typed tools: `Tool.make({ name, args, result })`, `Tool.execute`, `Tool.client` (what `snakepit codegen` writes). */
export * as Tool from "./Tool.js"
/** One Python worker as a Scope resource. */
export * as Worker from "./Worker.js"
/** The seam between the pool and its workers. */
export * from "./WorkerFactory.js"
