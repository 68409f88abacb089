#!/usr/bin/env node
// Release smoke test: the packed packages must run from dist/ with production dependencies only.
// The original project's release crashed at boot because it needed a build tool at runtime; this
// packs @snakepit/{grpc,registry,core,cli,cluster} as a user would receive them, installs them into
// an empty project with the README's own `npm install` line (the Effect 3 peers pinned) and
// `--omit=dev`, fails on any peer-dependency warning, starts a real Python worker from there, a
// one-runner cluster on its SQLite storage (a native module) with a session call through it, and
// runs the installed `snakepit doctor` and `snakepit status`. Python: the interpreter the set-up
// chose (scripts/python.mjs).
// Usage (after `npm run build`): node scripts/smoke.mjs
import { spawnSync } from "node:child_process"
import { existsSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { envWithPython, root } from "./python.mjs"

const PACKAGES = ["@snakepit/grpc", "@snakepit/registry", "@snakepit/core", "@snakepit/cli", "@snakepit/cluster"]
// Anything here at runtime means a dev tool leaked into the production dependency tree.
const FORBIDDEN = ["typescript", "vitest", "tsx", "ts-node", "@biomejs", "ts-proto", "esbuild", "vite"]
const MINUTE = 60_000

const log = (msg) => console.log(`[smoke] ${msg}`)

class SmokeFailure extends Error {}
const fail = (msg) => {
  throw new SmokeFailure(msg)
}

/** Runs a command with inherited stdio; any non-zero exit, signal or timeout fails the smoke. */
const run = (cmd, args, { cwd = root, timeout = 2 * MINUTE, env = process.env } = {}) => {
  const res = spawnSync(cmd, args, { cwd, env, stdio: "inherit", timeout })
  if (res.error) fail(`${cmd} ${args.join(" ")} could not run: ${res.error.message}`)
  if (res.status !== 0) fail(`${cmd} ${args.join(" ")} exited with ${res.status ?? res.signal}`)
}

/** Like `run`, but returns stdout (for `tar -tzf`). */
const capture = (cmd, args, { cwd = root, timeout = MINUTE } = {}) => {
  const res = spawnSync(cmd, args, { cwd, stdio: ["ignore", "pipe", "inherit"], timeout, encoding: "utf8" })
  if (res.error) fail(`${cmd} ${args.join(" ")} could not run: ${res.error.message}`)
  if (res.status !== 0) fail(`${cmd} ${args.join(" ")} exited with ${res.status ?? res.signal}`)
  return res.stdout
}

/** The repo's pinned pnpm (installed into .tools/ by scripts/dev.mjs), else the one on PATH. */
const pnpmBin = () => {
  const local = join(root, ".tools", "node_modules", ".bin", "pnpm")
  return existsSync(local) ? local : "pnpm"
}

const readJson = (file) => JSON.parse(readFileSync(file, "utf8"))

// ---------------------------------------------------------------------------------------------
// Step 1: pack
// ---------------------------------------------------------------------------------------------

/** Packs one workspace package into `dest`, returning the new tarball's path. */
const pack = (name, dest) => {
  const before = new Set(readdirSync(dest))
  run(pnpmBin(), ["--filter", name, "pack", "--pack-destination", dest])
  const added = readdirSync(dest).filter((f) => f.endsWith(".tgz") && !before.has(f))
  if (added.length !== 1) fail(`pnpm pack ${name} produced ${added.length} tarballs in ${dest}, expected 1`)
  return join(dest, added[0])
}

/** Checks a tarball ships its build output and nothing from source or tests. */
const checkTarball = (name, tarball) => {
  const entries = capture("tar", ["-tzf", tarball]).split("\n").filter(Boolean)
  const required = ["package/package.json", "package/dist/index.js"]
  if (name === "@snakepit/core") required.push("package/python/snakepit_bridge/server.py")
  if (name === "@snakepit/cli") required.push("package/dist/bin.js")
  const missing = required.filter((f) => !entries.includes(f))
  if (missing.length) fail(`${name} tarball is missing ${missing.join(", ")} (check "files" and the build)`)

  const leaked = entries.filter(
    (f) =>
      f.startsWith("package/src/") ||
      f.startsWith("package/test/") ||
      /(^|\/)__tests__\//.test(f) ||
      /\.(test|spec)\.[cm]?[jt]sx?$/.test(f) ||
      (/\.[cm]?tsx?$/.test(f) && !/\.d\.[cm]?ts$/.test(f))
  )
  if (leaked.length) fail(`${name} tarball ships source or test files: ${leaked.join(", ")}`)

  // Not fatal (it does not break users) but worth knowing: build state in the published package.
  const buildState = entries.filter((f) => f.endsWith(".tsbuildinfo"))
  if (buildState.length) log(`warning: ${name} tarball ships ${buildState.join(", ")}`)

  // pnpm must have rewritten `workspace:` ranges, or npm cannot install the tarball at all.
  const manifest = JSON.parse(capture("tar", ["-xOzf", tarball, "package/package.json"]))
  const workspaceRanges = Object.entries(manifest.dependencies ?? {}).filter(([, v]) =>
    String(v).startsWith("workspace:")
  )
  if (workspaceRanges.length) fail(`${name} tarball still has workspace: ranges: ${JSON.stringify(workspaceRanges)}`)
  log(`${name}: ${entries.length} files, required files present, no src/ or tests`)
}

// ---------------------------------------------------------------------------------------------
// Step 2: install with production dependencies only
// ---------------------------------------------------------------------------------------------

/** A project above the temp dir with its own node_modules would mask missing dependencies. */
const checkNoAncestorNodeModules = (dir) => {
  for (let d = dirname(dir); ; d = dirname(d)) {
    if (existsSync(join(d, "node_modules")))
      fail(`${join(d, "node_modules")} exists above the smoke project and would leak into resolution`)
    if (dirname(d) === d) return
  }
}

/** The package specs of the README's install line (`npm install @snakepit/core ...`). */
const readmeInstallLine = () => {
  const line = readFileSync(join(root, "README.md"), "utf8")
    .split("\n")
    .find((l) => l.startsWith("npm install @snakepit/core "))
  if (line === undefined) fail("README.md has no `npm install @snakepit/core ...` line")
  return line.split("#")[0].trim().split(/\s+/).slice(2)
}

// What npm prints when peer dependencies conflict or cannot be met (npm 7+ wording).
const PEER_TROUBLE = /ERESOLVE|peer dep|conflicting peer|Could not resolve dependency|unmet peer|invalid: /i

const installTarballs = (project, tarballs) => {
  writeFileSync(
    join(project, "package.json"),
    `${JSON.stringify({ name: "snakepit-smoke", version: "0.0.0", private: true, type: "module" }, null, 2)}\n`
  )
  // The README's line, with each @snakepit package replaced by its tarball; grpc and registry
  // tarballs too, in the same command, so npm satisfies core's ranges with them instead of
  // looking them up on the registry (they are unpublished).
  const byName = new Map(PACKAGES.map((name, i) => [name, tarballs[i]]))
  const specs = readmeInstallLine()
  const args = [...specs.map((spec) => byName.get(spec) ?? spec), ...tarballs.filter((t) => !specs.includes(t))]
  log(`npm install ${specs.join(" ")} (the README's line)`)
  const res = spawnSync("npm", ["install", "--omit=dev", "--no-audit", "--no-fund", ...new Set(args)], {
    cwd: project,
    stdio: ["ignore", "pipe", "pipe"],
    encoding: "utf8",
    // The registry may be slow on a loaded machine; the bound stays, generous.
    timeout: 10 * MINUTE
  })
  const output = `${res.stdout ?? ""}${res.stderr ?? ""}`
  if (res.error) fail(`npm install could not run: ${res.error.message}`)
  if (res.status !== 0) fail(`npm install exited with ${res.status ?? res.signal}:\n${output}`)
  const peerTrouble = output.split("\n").filter((l) => PEER_TROUBLE.test(l))
  if (peerTrouble.length) fail(`npm install warned about peer dependencies:\n${peerTrouble.join("\n")}`)
  log("installed with no peer-dependency warning")
}

/** Each @snakepit package must be installed once, from its tarball. */
const checkSnakepitFromTarballs = (project) => {
  const lock = readJson(join(project, "package-lock.json"))
  for (const name of PACKAGES) {
    const entries = Object.entries(lock.packages ?? {}).filter(([path]) => path.endsWith(`node_modules/${name}`))
    if (entries.length !== 1) fail(`${name} installed ${entries.length} times: ${entries.map(([p]) => p).join(", ")}`)
    const [path, info] = entries[0]
    if (path !== `node_modules/${name}`) fail(`${name} is nested at ${path}, not at the top level`)
    const from = String(info.resolved ?? "")
    if (!from.startsWith("file:")) fail(`${name} was resolved from ${from || "the registry"}, not from its tarball`)
  }
  log(`@snakepit/* resolved from the tarballs, once each`)
}

/** Two copies of effect mean two sets of service tags and runtimes: subtle runtime breakage. */
const checkSingleCopy = (project, names) => {
  const lock = readJson(join(project, "package-lock.json"))
  for (const name of names) {
    const copies = Object.entries(lock.packages ?? {}).filter(([path]) => path.endsWith(`node_modules/${name}`))
    if (copies.length > 1) {
      fail(`${name} installed ${copies.length} times: ${copies.map(([p, i]) => `${p}@${i.version}`).join(", ")}`)
    }
  }
  log(`one copy each of ${names.join(", ")}`)
}

/** Lists every installed package name, at any depth (nested node_modules included). */
const installedPackages = (nodeModules, found = []) => {
  if (!existsSync(nodeModules)) return found
  for (const entry of readdirSync(nodeModules)) {
    if (entry.startsWith(".")) continue
    const names = entry.startsWith("@")
      ? readdirSync(join(nodeModules, entry)).map((sub) => `${entry}/${sub}`)
      : [entry]
    for (const name of names) {
      found.push(name)
      installedPackages(join(nodeModules, name, "node_modules"), found)
    }
  }
  return found
}

const checkNoDevTools = (project) => {
  const installed = installedPackages(join(project, "node_modules"))
  const leaked = installed.filter((name) => FORBIDDEN.some((bad) => name === bad || name.startsWith(`${bad}/`)))
  if (leaked.length) fail(`dev tools in the production install: ${[...new Set(leaked)].join(", ")}`)
  log(`no ${FORBIDDEN.join(", ")} among ${installed.length} installed packages`)
}

/** The runtime script imports `effect` and `@effect/platform-node`: the README's line installs both. */
const ensureUserImportsResolvable = (project) => {
  const top = (name) => existsSync(join(project, "node_modules", name, "package.json"))
  for (const name of ["effect", "@effect/platform-node"]) {
    if (!top(name)) fail(`${name} is not resolvable from the project root after the README's install line`)
  }
  log("effect and @effect/platform-node resolvable from the project root")
}

// ---------------------------------------------------------------------------------------------
// Step 3: run a worker from the installed packages
// ---------------------------------------------------------------------------------------------

// Plain ESM, no TypeScript: exactly what a user's app would run. It also checks (on Linux) that
// the worker's PYTHONPATH is the installed package's python/, not some copy in the repository.
const RUNTIME_SCRIPT = `import { readFileSync } from "node:fs"
import { NodeContext } from "@effect/platform-node"
import { createPool, Worker } from "@snakepit/core"
import { Effect } from "effect"

const expectedPythonPath = new URL("./node_modules/@snakepit/core/python", import.meta.url).pathname

const pythonPathOf = (pid) => {
  try {
    const env = readFileSync("/proc/" + pid + "/environ", "utf8").split("\\0")
    return env.find((kv) => kv.startsWith("PYTHONPATH="))?.slice("PYTHONPATH=".length)
  } catch {
    return undefined // not Linux: nothing to check
  }
}

const result = await Effect.runPromise(
  Worker.make({}).pipe(
    Effect.flatMap((w) =>
      Effect.map(w.execute("ping"), (r) => ({ ...r, workerPid: w.pid, pythonPath: pythonPathOf(w.pid) }))
    ),
    Effect.scoped,
    Effect.provide(NodeContext.layer)
  )
)
// The whole product: a pool with its SQLite process registry (a native module) from dist.
const pool = await createPool({ size: 1, dataDir: new URL("./data", import.meta.url).pathname })
result.poolAdd = await pool.execute("add", { a: 40, b: 2 })
result.poolWorkerPid = (await pool.workers())[0].pid
await pool.close()
console.log(JSON.stringify(result))
const first = result.pythonPath?.split(":")[0]
if (result.pythonPath !== undefined && first !== expectedPythonPath) {
  console.error("worker PYTHONPATH starts with " + first + ", expected " + expectedPythonPath)
  process.exit(1)
}
process.exit(result.message === "pong" && typeof result.pid === "number" && result.poolAdd === 42 ? 0 : 1)
`

/**
 * The environment minus anything that could preload a loader or widen module resolution, with
 * SNAKEPIT_PYTHON set to the interpreter the set-up chose.
 */
const cleanEnv = () => {
  const env = envWithPython()
  for (const key of ["NODE_PATH", "NODE_OPTIONS"]) delete env[key]
  return env
}

// A runner with a pool of 1 on a loopback port and a SQLite file, in this process: a session call
// through the cluster, then the layer closes (its worker with it).
const CLUSTER_SCRIPT = `import { createServer } from "node:net"
import { SnakepitCluster } from "@snakepit/cluster"
import { Snakepit } from "@snakepit/core"
import { Effect, Layer, Logger, LogLevel } from "effect"

const port = await new Promise((resolve) => {
  const server = createServer()
  server.listen(0, "127.0.0.1", () => {
    const { port } = server.address()
    server.close(() => resolve(port))
  })
})
const layer = SnakepitCluster.layer({
  port,
  secret: "smoke-secret-0123456789",
  pool: { size: 1, dataDir: new URL("./data", import.meta.url).pathname }
}).pipe(Layer.provide(SnakepitCluster.sqlite(new URL("./cluster.db", import.meta.url).pathname)))
const result = await Effect.runPromise(
  Effect.gen(function* () {
    const snakepit = yield* Snakepit
    const sum = yield* snakepit.execute("add", { a: 40, b: 2 }, { session: "smoke", timeout: "60 seconds" })
    const workers = yield* snakepit.workers()
    return { clusterAdd: sum, clusterWorkerPid: workers[0]?.pid }
  }).pipe(Effect.provide(layer), Logger.withMinimumLogLevel(LogLevel.Warning))
)
console.log(JSON.stringify(result))
process.exit(result.clusterAdd === 42 && typeof result.clusterWorkerPid === "number" ? 0 : 1)
`

/** Runs `source` as a script of the smoke project; its last stdout line is its JSON result. */
const runScript = (project, name, source, what) => {
  const script = join(project, name)
  writeFileSync(script, source)
  const res = spawnSync(process.execPath, [script], {
    cwd: project,
    env: cleanEnv(),
    stdio: ["ignore", "pipe", "inherit"],
    encoding: "utf8",
    timeout: 2 * MINUTE
  })
  if (res.error) fail(`${what} could not run: ${res.error.message}`)
  const line = res.stdout.trim().split("\n").at(-1) ?? ""
  log(`result: ${line || "(no output)"}`)
  if (res.status !== 0) fail(`${what} exited with ${res.status ?? res.signal}`)
  return parseJson(what, line)
}

const runWorker = (project) => {
  const result = runScript(project, "smoke-run.mjs", RUNTIME_SCRIPT, "runtime script")
  if (result.message !== "pong" || typeof result.pid !== "number")
    fail(`unexpected ping result: ${JSON.stringify(result)}`)
  return result
}

const runCluster = (project) => runScript(project, "smoke-cluster.mjs", CLUSTER_SCRIPT, "cluster script")

// ---------------------------------------------------------------------------------------------
// Step 4: the installed `snakepit` command
// ---------------------------------------------------------------------------------------------

/** Runs the installed `snakepit <args>` (the bin npm linked) and returns its exit code and stdout. */
const snakepit = (project, args) => {
  const bin = join(project, "node_modules", ".bin", "snakepit")
  if (!existsSync(bin)) fail(`npm did not link the snakepit bin at ${bin}`)
  const res = spawnSync(bin, args, {
    cwd: project,
    env: cleanEnv(),
    stdio: ["ignore", "pipe", "inherit"],
    encoding: "utf8",
    timeout: 2 * MINUTE
  })
  if (res.error) fail(`snakepit ${args.join(" ")} could not run: ${res.error.message}`)
  return { status: res.status ?? res.signal, stdout: res.stdout }
}

const parseJson = (what, text) => {
  try {
    return JSON.parse(text)
  } catch {
    fail(`${what} did not print JSON:\n${text}`)
  }
}

/** `snakepit doctor --json` passes from the install: every check, a real worker included. Returns that worker's pid. */
const runDoctor = (project) => {
  const dataDir = join(project, "data")
  const res = snakepit(project, ["doctor", "--json", "--data-dir", dataDir])
  const checks = parseJson("snakepit doctor --json", res.stdout)
  for (const c of checks) log(`doctor: ${c.status.padEnd(4)} ${c.check}: ${c.detail}${c.fix ? ` (fix: ${c.fix})` : ""}`)
  if (res.status !== 0) fail(`snakepit doctor exited with ${res.status}`)
  const failed = checks.filter((c) => c.status === "fail")
  if (failed.length) fail(`snakepit doctor FAILed: ${failed.map((c) => c.check).join(", ")}`)
  const worker = checks.find((c) => c.check === "worker")
  if (worker?.status !== "ok") fail(`the doctor's worker check did not pass: ${JSON.stringify(worker)}`)
  // The worker runtime must be the installed package's, not the repository's.
  const bridge = checks.find((c) => c.check === "bridge")
  const installed = join(project, "node_modules", "@snakepit", "core", "python")
  if (!bridge?.detail.includes(installed))
    fail(`the doctor found the worker runtime elsewhere than ${installed}: ${bridge?.detail}`)
  const pid = Number(/pid (\d+)/.exec(worker.detail)?.[1])
  if (!(pid > 0)) fail(`no worker pid in the doctor's worker check: ${worker.detail}`)
  return pid
}

/** `snakepit status --json` reads the registry the pool wrote, and finds no orphan. */
const runStatus = (project) => {
  const res = snakepit(project, ["status", "--json", "--data-dir", join(project, "data")])
  if (res.status !== 0) fail(`snakepit status exited with ${res.status}: ${res.stdout}`)
  const report = parseJson("snakepit status --json", res.stdout)
  log(`status: ${JSON.stringify(report.summary)}`)
  if (report.summary.runs < 1) fail("snakepit status shows no run, but the pool above recorded one")
  if (report.summary.orphans !== 0) fail(`snakepit status found orphans: ${JSON.stringify(report.orphans)}`)
}

// ---------------------------------------------------------------------------------------------
// Step 5: nothing left running
// ---------------------------------------------------------------------------------------------

const isAlive = (pid) => {
  try {
    process.kill(pid, 0)
  } catch (error) {
    if (error.code === "ESRCH") return false
    throw error
  }
  // A zombie still answers kill(0); it is dead, only not yet reaped by its (new) parent.
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"))
  } catch {
    return true
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Other processes whose command line mentions `path` (Linux only; elsewhere nothing is found). */
const processesMentioning = (path) => {
  if (!existsSync("/proc")) return []
  const hits = []
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    if (Number(pid) === process.pid) continue
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ").trim()
      if (cmdline.includes(path)) hits.push(`${pid}: ${cmdline}`)
    } catch {
      // exited while we looked
    }
  }
  return hits
}

const checkWorkerGone = async (pid, project) => {
  const deadline = Date.now() + 5_000
  while (isAlive(pid) && Date.now() < deadline) await sleep(100)
  if (isAlive(pid)) fail(`worker pid ${pid} is still alive after the scope closed`)
  // The worker leads its own process group; nothing in that group may survive it either.
  try {
    process.kill(-pid, 0)
    fail(`processes of the worker's group ${pid} are still alive`)
  } catch (error) {
    if (error instanceof SmokeFailure) throw error
    if (error.code !== "ESRCH") throw error
  }
  const leftovers = processesMentioning(project)
  if (leftovers.length) fail(`processes still running from the smoke project:\n  ${leftovers.join("\n  ")}`)
  log(`worker pid ${pid} and its process group are gone`)
}

// ---------------------------------------------------------------------------------------------

const main = async () => {
  const started = Date.now()
  // realpath: on macOS tmpdir() is a symlink, and the worker reports resolved paths.
  const packDir = mkdtempSync(join(realpathSync(tmpdir()), "snakepit-smoke-pack-"))
  const project = mkdtempSync(join(realpathSync(tmpdir()), "snakepit-smoke-project-"))
  const cleanup = () => {
    rmSync(packDir, { recursive: true, force: true })
    rmSync(project, { recursive: true, force: true })
  }
  process.once("SIGINT", () => {
    cleanup()
    process.exit(130)
  })
  try {
    if (!existsSync(join(root, "packages", "core", "dist", "index.js"))) {
      fail("packages/core/dist is missing: run `npm run build` first")
    }

    log(`1/5 packing ${PACKAGES.join(", ")} into ${packDir}`)
    const tarballs = PACKAGES.map((name) => {
      const tarball = pack(name, packDir)
      checkTarball(name, tarball)
      return tarball
    })

    log(`2/5 installing the tarballs with --omit=dev into ${project}`)
    checkNoAncestorNodeModules(project)
    installTarballs(project, tarballs)
    checkSnakepitFromTarballs(project)
    checkSingleCopy(project, ["effect", "@effect/platform", "@effect/platform-node", "@effect/rpc", "@effect/sql"])
    checkNoDevTools(project)
    ensureUserImportsResolvable(project)

    log("3/5 starting a worker, a pool with its registry, then a one-runner cluster, from the installed packages")
    const result = runWorker(project)
    const cluster = runCluster(project)

    log("4/5 running the installed `snakepit doctor` and `snakepit status`")
    const doctorWorkerPid = runDoctor(project)
    runStatus(project)

    log("5/5 checking that the workers are gone")
    await checkWorkerGone(result.pid, project)
    await checkWorkerGone(result.poolWorkerPid, project)
    await checkWorkerGone(doctorWorkerPid, project)
    await checkWorkerGone(cluster.clusterWorkerPid, project)

    log(`PASS in ${((Date.now() - started) / 1000).toFixed(1)} s`)
  } catch (error) {
    const message = error instanceof SmokeFailure ? error.message : (error?.stack ?? String(error))
    console.error(`[smoke] FAIL: ${message}`)
    process.exitCode = 1
  } finally {
    cleanup()
  }
}

await main()
