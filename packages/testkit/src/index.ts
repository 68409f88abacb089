/**
 * @snakepit/testkit: helpers for tests of code that uses Snakepit.
 *
 * @since 0.1.0
 */

/** An in-memory WorkerFactory for deterministic pool tests on TestClock. */
export * as FakeWorkers from "./FakeWorkers.js"
/** Real-Python fixtures: a scoped worker and the no-survivors assertion. */
export * as Fixtures from "./Fixtures.js"
/** OS-level process checks: what is alive, and waiting until it is not. */
export * as Processes from "./Processes.js"
