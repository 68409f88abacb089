// The Snakepit demo: a pool of Python workers driven from Effect, typed errors, sessions,
// crash recovery, stats, a clean shutdown, and the Promise facade. Run it with
// `npm run demo` (which installs and builds first).
import { createPool, HostTool, HostTools, Snakepit, SnakepitPool } from "@snakepit/core"
import { Console, Effect, Layer, Schema, Stream } from "effect"

const heading = (text) => Console.log(`\n\x1b[1m${text}\x1b[0m`)
const indent = (text) =>
  text
    .trimEnd()
    .split("\n")
    .map((line) => `    ${line}`)
    .join("\n")

const program = Effect.gen(function* () {
  const snakepit = yield* Snakepit

  yield* heading("A pool of two Python workers")
  const workers = yield* snakepit.workers()
  for (const w of workers) yield* Console.log(`  ${w.id}: pid ${w.pid}, ${w.state}`)

  yield* heading("Calling tools")
  yield* Console.log(`  ping -> ${JSON.stringify(yield* snakepit.execute("ping"))}`)
  const echoed = yield* snakepit.execute("echo", { value: { model: "resnet50", scores: [0.91, 0.07] } })
  yield* Console.log(`  echo -> ${JSON.stringify(echoed)}`)
  yield* Console.log(`  add(2, 40) -> ${yield* snakepit.execute("add", { a: 2, b: 40 })}`)

  yield* heading("A Python exception arrives as a typed error")
  yield* snakepit
    .execute("fail", { type: "ValueError", message: "learning rate must be positive" })
    .pipe(
      Effect.catchTag("PythonError", (e) =>
        Console.log(
          `  _tag: ${e._tag}\n  type: ${e.type}\n  message: ${e.message}\n  traceback:\n${indent(e.traceback)}`
        )
      )
    )
  yield* snakepit
    .execute("no_such_tool")
    .pipe(Effect.catchTag("ToolNotFound", (e) => Console.log(`\n  _tag: ${e._tag}: ${e.message}`)))
  yield* snakepit
    .execute("echo", { value: 10n })
    .pipe(Effect.catchTag("InvalidArguments", (e) => Console.log(`  _tag: ${e._tag}: ${e.message}`)))

  yield* heading("Sessions stick to their worker")
  yield* snakepit.execute("session_put", { key: "user", value: "alice" }, { session: "alice" })
  const pids = []
  for (let i = 0; i < 3; i++) pids.push((yield* snakepit.execute("ping", {}, { session: "alice" })).pid)
  const stored = yield* snakepit.execute("session_get", { key: "user" }, { session: "alice" })
  yield* Console.log(`  session "alice": pids ${pids.join(", ")}; session_get("user") -> ${JSON.stringify(stored)}`)

  yield* heading("A worker crashes; the pool recovers")
  yield* snakepit
    .execute("crash", { code: 13 })
    .pipe(Effect.catchTag("WorkerCrashed", (e) => Console.log(`  _tag: ${e._tag}: ${e.message}`)))
  yield* Console.log(`  meanwhile another caller: add(1, 1) -> ${yield* snakepit.execute("add", { a: 1, b: 1 })}`)
  yield* snakepit.awaitReady()
  for (const w of yield* snakepit.workers()) yield* Console.log(`  ${w.id}: pid ${w.pid}, ${w.state}`)

  yield* heading("Streaming with back-pressure: a long-running tool drives a progress bar")
  const total = 40
  const tty = process.stdout.isTTY
  yield* snakepit.executeStream("stream_numbers", { count: total, delay_ms: 50 }).pipe(
    Stream.runForEach(({ i }) =>
      Effect.sync(() => {
        const done = i + 1
        const bar = `  [${"#".repeat(done).padEnd(total, ".")}] ${String(Math.round((100 * done) / total)).padStart(3)}%`
        if (tty) process.stdout.write(`\r${bar}`)
        else if (done % 10 === 0) console.log(bar)
      })
    )
  )
  if (tty) process.stdout.write("\n")
  // A session keeps the flood and its report on the same worker.
  const early = yield* snakepit
    .executeStream("flood", { count: 200_000, size: 1024 }, { session: "flood" })
    .pipe(Stream.take(1_000), Stream.runCount)
  // Cancellation reaches Python asynchronously: ask until the generator's finally has run.
  const report = yield* snakepit
    .execute("flood_report", {}, { session: "flood" })
    .pipe(Effect.repeat({ until: (r) => r.closed, times: 50 }))
  yield* Console.log(
    `  took ${early} chunks of a 200 000-chunk flood, then stopped: Python produced ${report.produced}, ` +
      `its generator closed: ${report.closed}`
  )

  yield* heading("Python calls back into TypeScript (host tools)")
  const greeting = yield* snakepit.execute("call_host", { tool: "greet", args: { name: "Ada" } })
  yield* Console.log(`  Python's call_host("greet", {name: "Ada"}) -> ${JSON.stringify(greeting)}`)
  yield* snakepit
    .execute("call_host", { tool: "greet", args: { name: 42 } })
    .pipe(
      Effect.catchTag("PythonError", (e) =>
        Console.log(`  bad arguments are refused before the handler runs: ${e.message.replace(/\s+/g, " ")}`)
      )
    )

  yield* heading("Stats")
  yield* Console.log(`  ${JSON.stringify(yield* snakepit.stats())}`)
  return (yield* snakepit.workers()).map((w) => w.pid)
})

const isAlive = (pid) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

// A TypeScript tool that Python workers may call, with a Schema for its arguments.
const greet = HostTool.make({
  name: "greet",
  description: "Greets someone, from TypeScript.",
  parameters: Schema.Struct({ name: Schema.String }),
  handler: ({ name }) => Effect.succeed(`hello ${name}, from Node ${process.version}`)
})

const pids = await Effect.runPromise(
  program.pipe(Effect.provide(SnakepitPool.layer({ size: 2 }).pipe(Layer.provide(HostTools.layer(greet)))))
)
await Effect.runPromise(heading("Shutting down"))
const survivors = pids.filter(isAlive)
console.log(
  survivors.length === 0 ? `  every worker stopped (pids ${pids.join(", ")} are gone)` : `  ALIVE: ${survivors}`
)

await Effect.runPromise(heading("The same from plain Promises: createPool()"))
const pool = await createPool({ size: 1 })
console.log(`  add(20, 22) -> ${await pool.execute("add", { a: 20, b: 22 })}`)
await pool.execute("fail", { type: "KeyError", message: "no such column" }).catch((e) => {
  console.log(`  rejected with ${e._tag} (${e.type}: ${e.message})`)
})
const [worker] = await pool.workers()
await pool.close()
console.log(`  closed; worker pid ${worker.pid} ${isAlive(worker.pid) ? "STILL ALIVE" : "is gone"}`)
process.exitCode = survivors.length === 0 && !isAlive(worker.pid) ? 0 : 1
