// Types of scripts/python.mjs for the TypeScript files that import it (vitest.config.ts).

/** The interpreter this repository's tooling starts workers with: SNAKEPIT_PYTHON, else the project venv's, else undefined. */
export declare const workerPython: () => string | undefined
/** `process.env` with SNAKEPIT_PYTHON set to `workerPython()` (unchanged when there is none). */
export declare const envWithPython: (env?: NodeJS.ProcessEnv) => NodeJS.ProcessEnv
/** `sys.executable` of `python`: what a shim or a name on PATH resolves to. */
export declare const resolveExecutable: (python: string) => string | undefined
/** The project venv's interpreter path. */
export declare const VENV_PYTHON: string
