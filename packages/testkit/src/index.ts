/**
 * @snakepit/testkit: test code that uses Snakepit, deterministically, without Python; and
 * prove with the OS that real-Python tests leave nothing behind.
 *
 * @since 0.1.0
 */

/** A small tmpfs that fills up, for tests of a full disk. */
export * as Disks from "./Disks.js"
/** An in-memory WorkerFactory for deterministic pool tests on TestClock. */
export * as FakeWorkers from "./FakeWorkers.js"
/** Real-Python fixtures: a scoped worker or pool, and the no-survivors assertion. */
export * as Fixtures from "./Fixtures.js"
/** OS-level process checks: what is alive, and waiting until it is not. */
export * as Processes from "./Processes.js"
/** `SnakepitTest.layer(...)`: the Snakepit service backed by fake workers. */
export * from "./SnakepitTest.js"
/** Real virtualenvs made for a test, from the suite interpreter's base (no shim). */
export * as Venv from "./Venv.js"
