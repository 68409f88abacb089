// The Snakepit demo: two Python workers, a few calls, a Python exception as a typed error,
// and a clean shutdown. Run it with `npm run demo` (which installs and builds first).
import { NodeContext } from "@effect/platform-node"
import { Worker } from "@snakepit/core"
import { Console, Effect } from "effect"

const heading = (text) => Console.log(`\n\x1b[1m${text}\x1b[0m`)

const program = Effect.gen(function* () {
  yield* heading("Starting two Python workers")
  const workers = yield* Effect.all([Worker.make({ id: "demo-1" }), Worker.make({ id: "demo-2" })], {
    concurrency: "unbounded"
  })
  for (const w of workers) yield* Console.log(`  ${w.id}: pid ${w.pid}, ${w.python}, bridge on ${w.address}`)

  yield* heading("Calling tools")
  for (const w of workers) {
    const pong = yield* w.execute("ping")
    yield* Console.log(`  ${w.id} ping -> ${JSON.stringify(pong)}`)
  }
  const [first, second] = workers
  const echoed = yield* first.execute("echo", { value: { model: "resnet50", scores: [0.91, 0.07] } })
  yield* Console.log(`  echo -> ${JSON.stringify(echoed)}`)
  yield* Console.log(`  add(2, 40) -> ${yield* second.execute("add", { a: 2, b: 40 })}`)

  yield* heading("A Python exception arrives as a typed error")
  yield* first.execute("fail", { type: "ValueError", message: "learning rate must be positive" }).pipe(
    Effect.catchTag("PythonError", (error) =>
      Console.log(
        `  _tag: ${error._tag}\n  type: ${error.type}\n  message: ${error.message}\n  traceback:\n` +
          error.traceback
            .trimEnd()
            .split("\n")
            .map((line) => `    ${line}`)
            .join("\n")
      )
    )
  )
  yield* first
    .execute("no_such_tool")
    .pipe(Effect.catchTag("ToolNotFound", (error) => Console.log(`\n  _tag: ${error._tag}: ${error.message}`)))
  yield* first
    .execute("echo", { value: 10n })
    .pipe(Effect.catchTag("InvalidArguments", (error) => Console.log(`  _tag: ${error._tag}: ${error.message}`)))

  yield* heading("Shutting down")
  return workers.map((w) => w.pid)
})

const pids = await Effect.runPromise(program.pipe(Effect.scoped, Effect.provide(NodeContext.layer)))
const alive = pids.filter((pid) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
})
console.log(
  alive.length === 0 ? `  both workers stopped (pids ${pids.join(", ")} are gone)` : `  STILL ALIVE: ${alive}`
)
process.exitCode = alive.length === 0 ? 0 : 1
