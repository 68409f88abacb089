// Starting runner processes of examples/cluster/runner.mjs and waiting for their ready lines;
// shared by the cluster example and the benchmark.
import { spawn } from "node:child_process"
import { createServer } from "node:net"
import { dirname, join } from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"

const runnerScript = join(dirname(fileURLToPath(import.meta.url)), "runner.mjs")

/** A loopback port nothing listens on right now. */
export const freePort = () =>
  new Promise((resolve) => {
    const server = createServer()
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })

/**
 * Starts a runner on `port` with `env` (SNAKEPIT_CLUSTER_*, SNAKEPIT_*) and resolves with its
 * ready line plus `child` and `stop()` (SIGTERM, then SIGKILL after 10 s).
 */
export const startRunner = (port, env) =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [runnerScript], {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, ...env, SNAKEPIT_CLUSTER_HOST: "127.0.0.1", SNAKEPIT_CLUSTER_PORT: String(port) }
    })
    const exited = new Promise((r) => child.once("exit", r))
    const stop = async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill("SIGTERM")
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000)
      await exited
      clearTimeout(timer)
    }
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`runner on port ${port} not ready within 60 s`))
    }, 60_000)
    child.once("exit", (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`runner on port ${port} exited (${code ?? signal}) before it was ready`))
    })
    createInterface({ input: child.stdout }).on("line", (line) => {
      if (!line.startsWith("{")) return
      clearTimeout(timer)
      resolve({ ...JSON.parse(line), child, exited, stop })
    })
  })
