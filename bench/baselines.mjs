// The baselines of the benchmarks, and the raw clients the profiler compares layers with:
//   - a gRPC worker started by hand (`--transport grpc`, its own token) and a raw grpc-js client
//     that sends the token with every call, as BridgeClient does;
//   - a worker on the local transport driven by hand: raw frames on the socket pair (fds 3, 4);
//   - python-shell, JSON lines over stdio, with bench/peer_echo.py (the same handler as `echo`);
//   - N bare starts of the interpreter in parallel.
// Every process started here carries `--snakepit-run-id <runId>` on its command line, so the
// benchmark's leak check finds it, and is killed with its process group by `killAll`.
//
// Every one is also started in a session of its own (`detached`), as the pool starts its workers.
// That is not only for the kill: with the kernel's scheduler autogroups (Linux's default on
// desktops and many servers), each session shares one slice of the CPU. Left in the benchmark's
// session, eight bare `import grpc` processes shared one slice with Node while eight pool workers
// had eight, and on a loaded machine the baseline took 2.5 times as long for the same work.
import { spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { dirname, join } from "node:path"
import { performance } from "node:perf_hooks"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import { credentials, Metadata } from "@grpc/grpc-js"
import { ThreadLimits } from "@snakepit/core"
import { BridgeClient, Proto } from "@snakepit/grpc"
import { PythonShell } from "python-shell"

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, "..")
export const ADAPTER = "snakepit_bridge.showcase:ShowcaseAdapter"
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024
const READY_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 3_000

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** The environment the pool gives its workers: thread limits, the bridge on PYTHONPATH, unbuffered. */
export const workerEnv = {
  ...process.env,
  ...ThreadLimits.toEnv(ThreadLimits.defaults),
  PYTHONPATH: [join(root, "packages", "core", "python"), process.env.PYTHONPATH].filter(Boolean).join(":"),
  PYTHONUNBUFFERED: "1",
  PYTHONDONTWRITEBYTECODE: "1"
}

/** Every child started here and not yet gone. */
const children = new Set()

const track = (child) => {
  children.add(child)
  child.once("exit", () => children.delete(child))
  return child
}

/** Kills the process group `pid` leads, or the process alone when it leads none (python-shell's). */
const killGroup = (pid, signal) => {
  try {
    process.kill(-pid, signal)
  } catch {
    try {
      process.kill(pid, signal)
    } catch {}
  }
}

/** SIGKILLs the process group of every baseline process still running (for SIGINT and failures). */
export const killAll = () => {
  for (const child of children) killGroup(child.pid, "SIGKILL")
}

/** Resolves on exit; SIGKILLs the group when the child is not gone within the stop timeout. */
const reap = async (child, exited) => {
  const gone = await Promise.race([exited.then(() => true), sleep(STOP_TIMEOUT_MS).then(() => false)])
  if (!gone) {
    killGroup(child.pid, "SIGKILL")
    await exited
  }
}

/** The worker command line, as the pool builds it, for `transport`. */
const workerArgs = (transport, id, runId) => [
  "-m",
  "snakepit_bridge",
  "--adapter",
  ADAPTER,
  "--transport",
  transport,
  "--worker-id",
  id,
  "--snakepit-run-id",
  runId,
  "--max-message-bytes",
  String(MAX_MESSAGE_BYTES)
]

/** Spawns a worker in its own process group and keeps the tail of its stderr for errors. */
const spawnWorker = (python, args, stdio) => {
  const child = track(spawn(python, args, { env: workerEnv, stdio, detached: true }))
  const worker = { child, stderr: "", exited: new Promise((resolve) => child.once("exit", resolve)) }
  child.stderr.on("data", (d) => {
    worker.stderr = (worker.stderr + d).slice(-4000)
  })
  return worker
}

/** Rejects with the stderr tail when the child exits first or is not ready within the bound. */
const readiness = (worker, id, ready) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`baseline worker ${id} not ready in ${READY_TIMEOUT_MS / 1000} s:\n${worker.stderr}`)),
      READY_TIMEOUT_MS
    )
    worker.child.once("exit", (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`baseline worker ${id} exited (${code ?? signal}) before ready:\n${worker.stderr}`))
    })
    ready(
      (value) => {
        clearTimeout(timer)
        resolve(value)
      },
      (error) => {
        clearTimeout(timer)
        reject(error)
      }
    )
  })

// ---------------------------------------------------------------------------------------------
// gRPC: a worker started by hand and a raw grpc-js client with the worker's token
// ---------------------------------------------------------------------------------------------

/**
 * Starts `python -m snakepit_bridge --transport grpc` as the pool would: the token goes in the
 * bootstrap line on stdin, the worker answers `SNAKEPIT_READY {json}` on stdout. Resolves with
 * a connected raw client; `stop()` closes stdin (the worker exits when it closes).
 */
export const spawnGrpcWorker = async (python, id, runId) => {
  const token = randomBytes(32).toString("base64url")
  const worker = spawnWorker(python, workerArgs("grpc", id, runId), ["pipe", "pipe", "pipe"])
  worker.child.stdin.write(`${JSON.stringify({ token })}\n`)
  const metadata = new Metadata()
  metadata.set(BridgeClient.TOKEN_METADATA_KEY, token)
  let address
  const client = await readiness(worker, id, (resolve, reject) => {
    createInterface({ input: worker.child.stdout }).once("line", (line) => {
      if (!line.startsWith("SNAKEPIT_READY ")) return reject(new Error(`baseline worker ${id}: ${line}`))
      address = `127.0.0.1:${JSON.parse(line.slice("SNAKEPIT_READY ".length)).port}`
      // The same channel options as the pool's BridgeClient.
      const client = new Proto.BridgeServiceClient(address, credentials.createInsecure(), {
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.enable_http_proxy": 0
      })
      client.waitForReady(Date.now() + 10_000, (error) => (error ? reject(error) : resolve(client)))
    })
  })
  return {
    id,
    pid: worker.child.pid,
    address,
    token,
    client,
    metadata,
    stop: async () => {
      client.close()
      worker.child.stdin.end()
      await reap(worker.child, worker.exited)
    }
  }
}

/** A raw ExecuteToolRequest of `tool` with JSON `args`, every field set as BridgeClient's are. */
export const grpcRequest = (tool, args) => ({
  tool,
  argsJson: Buffer.from(JSON.stringify(args)),
  attachments: {},
  sessionId: "",
  requestId: "",
  traceparent: "",
  blobs: [],
  tagged: false
})

/** `echo(value)` through the raw client, with the token. */
export const rawGrpcEcho = (worker, value) =>
  new Promise((resolve, reject) => {
    worker.client.executeTool(grpcRequest("echo", { value }), worker.metadata, (error, response) => {
      if (error) return reject(error)
      if (response.outcome?.$case !== "resultJson") return reject(new Error(`echo failed: ${JSON.stringify(response)}`))
      resolve(JSON.parse(response.outcome.value.toString("utf8")))
    })
  })

/** The chunks of `flood(count, size)` as a raw server stream, counted and checked. */
export const rawGrpcFlood = async (worker, count, size) => {
  const call = worker.client.executeStreamingTool(grpcRequest("flood", { count, size }), worker.metadata)
  let n = 0
  for await (const chunk of call) {
    if (chunk.outcome?.$case !== "dataJson") throw new Error(`flood failed: ${JSON.stringify(chunk.outcome)}`)
    if (JSON.parse(chunk.outcome.value.toString("utf8")).length !== size) throw new Error("flood: wrong chunk size")
    n++
  }
  return n
}

// ---------------------------------------------------------------------------------------------
// Local transport by hand: raw frames on the two inherited socket pairs (for the profiler)
// ---------------------------------------------------------------------------------------------

// The frame layout of packages/core/src/internal/local/frames.ts, written out again so that
// this client owes nothing to the code it is compared with:
// u32 length of the rest, u8 flags, u32 header length, the JSON header (no blobs here).
const encodeFrame = (header) => {
  const text = JSON.stringify(header)
  const size = Buffer.byteLength(text)
  const frame = Buffer.allocUnsafe(9 + size)
  frame.writeUInt32BE(5 + size, 0)
  frame.writeUInt8(0, 4)
  frame.writeUInt32BE(size, 5)
  frame.write(text, 9, "utf8")
  return frame
}

/** Calls `onFrame(header)` for every whole frame arriving on `socket`. */
const readFrames = (socket, onFrame) => {
  let pending = Buffer.alloc(0)
  socket.on("data", (chunk) => {
    let data = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk
    while (data.length >= 4) {
      const total = 4 + data.readUInt32BE(0)
      if (data.length < total) break
      const headerSize = data.readUInt32BE(5)
      onFrame(JSON.parse(data.toString("utf8", 9, 9 + headerSize)))
      data = data.subarray(total)
    }
    pending = data
  })
}

/**
 * Starts `python -m snakepit_bridge --transport local` (or `script`, a stand-in speaking the same
 * frames) with the two socket pairs as fds 3 and 4 and waits for its `ready` frame. `call(tool, args)` sends one `call` frame and resolves with
 * the `result` frame's value; many calls may be in flight.
 */
export const spawnLocalWorker = async (python, id, runId, { concurrency = 1, script } = {}) => {
  const args =
    script === undefined
      ? [...workerArgs("local", id, runId), "--concurrency", String(concurrency)]
      : [script, "--snakepit-run-id", runId]
  const worker = spawnWorker(python, args, ["pipe", "pipe", "pipe", "pipe", "pipe"])
  worker.child.stdout.resume()
  const [callSocket, controlSocket] = [worker.child.stdio[3], worker.child.stdio[4]]
  const waiting = new Map()
  readFrames(callSocket, (header) => {
    const call = waiting.get(header.i)
    waiting.delete(header.i)
    if (header.t === "result") call?.resolve(header.v)
    else call?.reject(new Error(`${header.t} frame: ${JSON.stringify(header)}`))
  })
  await readiness(worker, id, (resolve) =>
    readFrames(controlSocket, (header) => {
      if (header.t === "ready") resolve()
    })
  )
  let nextId = 1
  return {
    id,
    pid: worker.child.pid,
    call: (tool, a) =>
      new Promise((resolve, reject) => {
        const i = nextId++
        waiting.set(i, { resolve, reject })
        callSocket.write(encodeFrame({ t: "call", i, tool, a }))
      }),
    stop: async () => {
      worker.child.stdin.end()
      await reap(worker.child, worker.exited)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// python-shell and bare interpreters
// ---------------------------------------------------------------------------------------------

/**
 * `n` python-shell processes running bench/peer_echo.py. Each `call(value)` sends one JSON line
 * to its process and resolves with its reply; several may be in flight on one process (they
 * queue in its stdin, as python-shell users would pipeline them).
 */
export const startShells = (python, n, runId) => {
  const shells = Array.from({ length: n }, () => {
    const shell = new PythonShell(join(here, "peer_echo.py"), {
      mode: "json",
      pythonPath: python,
      pythonOptions: ["-u"],
      args: ["--snakepit-run-id", runId],
      env: workerEnv,
      detached: true
    })
    track(shell.childProcess)
    const waiting = []
    const failAll = (error) => {
      for (const w of waiting.splice(0)) w.reject(error)
    }
    shell.on("message", (message) => waiting.shift()?.resolve(message))
    shell.on("error", failAll)
    shell.on("pythonError", failAll)
    shell.on("close", () => failAll(new Error("python-shell process exited")))
    return {
      shell,
      call: (value) =>
        new Promise((resolve, reject) => {
          waiting.push({ resolve, reject })
          shell.send({ value })
        })
    }
  })
  return {
    pids: shells.map((s) => s.shell.childProcess.pid),
    calls: shells.map((s) => s.call),
    close: () =>
      Promise.all(
        shells.map(
          ({ shell }) =>
            new Promise((resolve) => {
              const exited = new Promise((r) => {
                if (shell.childProcess.exitCode !== null || shell.childProcess.signalCode !== null) r()
                else shell.childProcess.once("exit", r)
              })
              shell.end(() => {})
              reap(shell.childProcess, exited).then(resolve)
            })
        )
      )
  }
}

/**
 * Milliseconds until `n` processes of `python -c <code>` started in parallel have all exited
 * (the same interpreter executable as the pool's, so no shim is in the figure).
 */
export const bareStarts = async (python, code, n, runId) => {
  const t0 = performance.now()
  const codes = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise((resolve, reject) => {
          const child = track(
            spawn(python, ["-c", code, "--snakepit-run-id", runId], { env: workerEnv, stdio: "ignore", detached: true })
          )
          child.once("error", reject)
          child.once("exit", (status) => resolve(status))
        })
    )
  )
  const ms = performance.now() - t0
  if (codes.some((c) => c !== 0))
    throw new Error(`bare python -c ${JSON.stringify(code)}: exit codes ${codes.join(",")}`)
  return ms
}
