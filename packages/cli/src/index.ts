/**
 * @snakepit/cli: the `snakepit` command (`doctor`, `status`, `sweep`), and the same commands as
 * Effects for programs and tests.
 *
 * @since 0.1.0
 */

/** The command line: `Cli.run(argv)` returns the exit code. */
export * as Cli from "./Cli.js"
/** `snakepit codegen`: `Codegen.render(adapter, service, tools)` writes a typed client; `Codegen.codegen(options)` starts the adapter and writes or checks it. */
export * as Codegen from "./Codegen.js"
/** `snakepit doctor`: `Doctor.run(options)` returns every check; `Doctor.doctor` also prints them. */
export * as Doctor from "./Doctor.js"
/** Typed failures of the commands. */
export * from "./errors.js"
/** `snakepit restart|stop|resize|drain|events`: act on running hosts through their control sockets. */
export * as Operate from "./Operate.js"
/** `snakepit status`: `Status.inspect` reads the registry against the OS; `Status.status` also prints it. */
export * as Status from "./Status.js"
/** `snakepit sweep`: `Sweep.sweep(options)` kills proven orphans of dead runs and prints what it killed. */
export * as Sweep from "./Sweep.js"
/** `snakepit top`: `Top.frame(runs)` asks the live hosts for their pools; `Top.top(options)` prints frames. */
export * as Top from "./Top.js"
