/**
 * [slow] Issue 13 with real workers: cancellation that stops Python (or retires the worker),
 * tools whose processes leave their group, a module planted in the working directory, options
 * that cannot cross `exec`, and a host out of file descriptors.
 */
import { existsSync, mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { delimiter, dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { Fixtures, Processes } from "@snakepit/testkit"
import { Effect, Fiber, Metric } from "effect"
import { createPool, SnakepitMetrics } from "../src/index.js"

const here = dirname(fileURLToPath(import.meta.url))
const fixtures = join(here, "fixtures", "python")
const tools = { adapter: "hardening_tools:HardeningTools", pythonPath: [fixtures] } as const

describe("[slow] cancellation reaches Python", () => {
  it.live(
    "the issue's repro: seven timed-out blocking sleeps, then the same worker serves at once",
    () =>
      Fixtures.withPool(
        (pool) =>
          Effect.gen(function* () {
            const [before] = yield* pool.workers()
            for (let i = 0; i < 7; i++) {
              const error = yield* Effect.flip(pool.execute("sleep", { ms: 600_000 }, { timeout: "200 millis" }))
              expect(error._tag).toBe("CallTimeout")
            }
            expect(yield* pool.execute("echo", { value: "next" }, { timeout: "10 seconds" })).toBe("next")
            // Interrupted in Python, not replaced: the worker that slept is the one that answered.
            expect((yield* pool.workers()).map((w) => w.pid)).toEqual([before!.pid])
            expect((yield* pool.stats()).restarts).toBe(0)
          }),
        { size: 1 }
      ),
    60_000
  )

  it.live(
    "a timed-out CPU-bound tool is interrupted and the worker is as fast as before",
    () =>
      Fixtures.withPool(
        (pool) =>
          Effect.gen(function* () {
            const [before] = yield* pool.workers()
            const error = yield* Effect.flip(pool.execute("spin", { seconds: 600 }, { timeout: "200 millis" }))
            expect(error._tag).toBe("CallTimeout")
            // A tenth of a second of spinning finishes: nothing else is burning the interpreter.
            const spins = yield* pool.execute("spin", { seconds: 0.1 }, { timeout: "10 seconds" })
            expect(spins).toBeGreaterThan(0)
            expect((yield* pool.workers()).map((w) => w.pid)).toEqual([before!.pid])
            expect((yield* pool.stats()).restarts).toBe(0)
          }),
        { size: 1, ...tools }
      ),
    60_000
  )

  it.live(
    "a tool deaf to cancellation is retired after cancelGrace, named in the metric, and replaced",
    () =>
      Fixtures.withPool(
        (pool) =>
          Effect.gen(function* () {
            const [stuck] = yield* pool.workers()
            const error = yield* Effect.flip(pool.execute("stubborn", { seconds: 600 }, { timeout: "200 millis" }))
            expect(error._tag).toBe("CallTimeout")
            // Queued behind the stubborn tool until the grace ends, then served by a new worker.
            expect(yield* pool.execute("spin", { seconds: 0.01 }, { timeout: "30 seconds" })).toBeGreaterThan(0)
            const [replacement] = yield* pool.workers()
            expect(replacement!.pid).not.toBe(stuck!.pid)
            expect((yield* pool.stats()).restarts).toBe(1)
            yield* Processes.awaitGone([stuck!.pid])
            const counted = yield* Metric.value(
              SnakepitMetrics.stuckCalls.pipe(Metric.tagged("pool", "default"), Metric.tagged("tool", "stubborn"))
            )
            expect(counted.count).toBeGreaterThanOrEqual(1)
          }),
        { size: 1, cancelGrace: "1 second", queue: { timeout: "30 seconds" }, ...tools }
      ),
    60_000
  )
})

describe("[slow] processes that leave the worker's group", () => {
  it.live(
    "a child in a new session and a double-forked daemon die when the pool closes",
    () =>
      Effect.gen(function* () {
        const escaped = yield* Fixtures.withPool(
          (pool) =>
            Effect.gen(function* () {
              const pids = (yield* pool.execute("escape", {})) as { session: number; daemon: number }
              // Both really left: another session than the worker's, and not its children.
              expect(Processes.isAlive(pids.session) && Processes.isAlive(pids.daemon)).toBe(true)
              return [pids.session, pids.daemon]
            }),
          { size: 1, ...tools }
        )
        // withPool already proved that nothing carrying the run id survived; ask by pid too.
        yield* Processes.awaitGone(escaped)
      }),
    60_000
  )
})

describe("[slow] the working directory cannot shadow the standard library", () => {
  it.live(
    "an argparse.py planted in the cwd does not run; an adapter in the cwd still imports",
    () =>
      Effect.gen(function* () {
        const cwd = mkdtempSync(join(tmpdir(), "snakepit-planted-"))
        const marker = join(cwd, "planted-ran")
        writeFileSync(
          join(cwd, "argparse.py"),
          `open(${JSON.stringify(marker)}, "w").write("ran")\nraise SystemExit("planted argparse ran")\n`
        )
        writeFileSync(
          join(cwd, "cwd_adapter.py"),
          [
            "from snakepit_bridge import BaseAdapter, tool",
            "",
            "class CwdAdapter(BaseAdapter):",
            "    @tool",
            "    def hello(self) -> str:",
            '        return "from the cwd"',
            ""
          ].join("\n")
        )
        const said = yield* Fixtures.withWorker((worker) => worker.execute("hello", {}), {
          adapter: "cwd_adapter:CwdAdapter",
          cwd
        })
        expect(said).toBe("from the cwd")
        expect(existsSync(marker)).toBe(false)
      }),
    60_000
  )
})

describe("[slow] odd arguments are InvalidArguments with a path, and the pool serves on", () => {
  const nested = (depth: number): unknown => {
    let value: unknown = "leaf"
    for (let i = 0; i < depth; i++) value = [value]
    return value
  }
  const getter = Object.defineProperty({}, "bad", {
    enumerable: true,
    get: () => {
      throw new Error("getter threw")
    }
  })
  const cases: ReadonlyArray<readonly [string, unknown, string]> = [
    ["10 000 levels deep", { value: nested(10_000) }, "args.value"],
    ["2 000 levels deep", { value: nested(2_000) }, "args.value"],
    ["a throwing getter", { value: getter }, "args.value"],
    [
      "a throwing toJSON",
      {
        value: {
          toJSON: () => {
            throw new Error("toJSON threw")
          }
        }
      },
      "args.value"
    ],
    [
      "a throwing Proxy",
      {
        value: new Proxy(
          {},
          {
            ownKeys: () => {
              throw new Error("proxy threw")
            }
          }
        )
      },
      "args.value"
    ]
  ]
  it.live(
    "each one, then a normal call on the same worker; a result too deep is a typed error too",
    () =>
      Fixtures.withPool(
        (pool) =>
          Effect.gen(function* () {
            for (const [what, args, path] of cases) {
              const error = yield* Effect.flip(pool.execute("echo", args))
              expect(error._tag, what).toBe("InvalidArguments")
              if (error._tag === "InvalidArguments")
                expect(error.path ?? "", what).toMatch(new RegExp(`^${path.replace(/\./g, "\\.")}`))
            }
            expect(yield* pool.execute("echo", { value: nested(200) })).toEqual(nested(200))
            const tooDeep = yield* Effect.flip(pool.execute("deep", { depth: 5_000 }, { timeout: "10 seconds" }))
            expect(["PythonError", "InvalidResult", "TransportError"]).toContain(tooDeep._tag)
            expect(tooDeep.message).toMatch(/deep|recursion/i)
            expect((yield* pool.execute("deep", { depth: 3 })) as unknown).toEqual([[[[]]]])
            expect((yield* pool.stats()).restarts).toBe(0)
          }),
        { size: 1, ...tools }
      ),
    60_000
  )
})

describe("[slow] sessions are safe by default", () => {
  it.live(
    "the issue's repro: alice's get waits for her busy worker and finds her value",
    () =>
      Fixtures.withPool(
        (pool) =>
          Effect.gen(function* () {
            yield* pool.execute("session_put", { key: "k", value: "alice's" }, { session: "alice" })
            const long = yield* Effect.fork(pool.execute("sleep", { ms: 500 }, { session: "alice" }))
            yield* pool
              .stats()
              .pipe(
                Effect.delay("10 millis"),
                Effect.repeat({ until: (stats) => stats.busy === 1 }),
                Effect.timeout("10 seconds")
              )
            // The other worker is idle, but it does not hold alice's state: the default waits.
            expect(yield* pool.execute("session_get", { key: "k" }, { session: "alice" })).toBe("alice's")
            yield* Fiber.join(long)
          }),
        { size: 2 }
      ),
    60_000
  )
})

describe("[slow] a bad call option never takes a worker", () => {
  it.live(
    "the issue's options on a pool of 2, then two calls at once still run side by side",
    () =>
      Fixtures.withPool(
        (pool) =>
          Effect.gen(function* () {
            const bad: ReadonlyArray<Record<string, unknown>> = [
              { timeout: "abc" },
              { timeout: "infinity" },
              { timeout: {} },
              { timeout: Number.NaN },
              { timeout: -5 },
              { attachments: { photo: "not bytes" } }
            ]
            for (const options of bad) {
              const error = yield* Effect.flip(pool.execute("echo", { value: 1 }, options as never))
              expect(error._tag, JSON.stringify(options)).toBe("InvalidArguments")
            }
            expect(yield* pool.stats()).toMatchObject({ busy: 0, ready: 2 })
            // Both workers still take calls: two at once are both running.
            const both = yield* Effect.fork(
              Effect.all([pool.execute("sleep", { ms: 1_000 }), pool.execute("sleep", { ms: 1_000 })], {
                concurrency: 2
              })
            )
            const running = yield* pool
              .stats()
              .pipe(
                Effect.delay("20 millis"),
                Effect.repeat({ until: (stats) => stats.busy === 2 }),
                Effect.timeout("10 seconds")
              )
            expect(running.busy).toBe(2)
            yield* Fiber.join(both)
            expect(yield* pool.stats()).toMatchObject({ busy: 0, ready: 2, restarts: 0 })
          }),
        { size: 2, queue: { timeout: "1 second" } }
      ),
    60_000
  )
})

describe("[slow] options that cannot cross exec fail at once", () => {
  const cases: ReadonlyArray<readonly [string, Parameters<typeof createPool>[0]]> = [
    ["env", { env: { GREETING: "hi\u0000there" } }],
    ["env", { env: { "A=B": "1" } }],
    ["pythonPath", { pythonPath: [`/tmp/a${delimiter}/tmp/b`] }],
    ["pythonPath", { pythonPath: ["/tmp/\u0000"] }],
    ["python", { python: "python3\u0000" }]
  ]
  for (const [key, options] of cases) {
    it.live(`createPool(${JSON.stringify(options)}) is a ConfigError for ${key}`, () =>
      Effect.gen(function* () {
        const error = yield* Effect.tryPromise({
          try: () => createPool({ size: 1, ...options, startupTimeout: "20 seconds" }),
          catch: (e) => e as { _tag: string; key: string }
        }).pipe(Effect.flip, Effect.timeout("20 seconds"))
        expect(error._tag).toBe("ConfigError")
        expect(error.key.startsWith(key)).toBe(true)
      })
    )
  }
})

describe("[slow] a host out of file descriptors", () => {
  it.live(
    "says so (spawn_failed, EMFILE), not python_not_found",
    () =>
      Effect.gen(function* () {
        const host = join(here, "fixtures", "hosts", "emfile-host.mjs")
        // The limit is what the host's own imports need with room to spare (node's loader opens
        // modules concurrently: 256 ran out on a slower machine); the host then fills it itself.
        const { stdout } = yield* Processes.runToCompletion("bash", [
          "-c",
          `ulimit -Sn 2048 && exec node ${JSON.stringify(host)} '{}'`
        ])
        const outcome = JSON.parse(stdout.trim().split("\n").at(-1)!) as Record<string, unknown>
        expect(outcome).toMatchObject({ tag: "WorkerStartError", reason: "spawn_failed" })
        expect(String(outcome.message)).toMatch(/file descriptors/)
      }),
    60_000
  )
})
