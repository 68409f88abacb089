#!/usr/bin/env node
// Generates the TypeScript types (ts-proto) and the Python stubs from proto/snakepit_bridge.proto.
// The generated files are committed; `--check` regenerates into a temp dir and fails on any difference.
// Needs protoc and grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc).
import { spawnSync } from "node:child_process"
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const check = process.argv.includes("--check")
const tsOut = join(root, "packages", "grpc", "src", "generated")
const pyOut = join(root, "python", "snakepit_bridge", "generated")

const which = (bin) => spawnSync("sh", ["-c", `command -v ${bin}`], { encoding: "utf8" }).stdout.trim()
const protoc = which("protoc")
const pyPlugin = which("grpc_python_plugin")
if (!protoc || !pyPlugin) {
  const msg =
    "protoc and grpc_python_plugin are needed (Debian: apt-get install protobuf-compiler protobuf-compiler-grpc)"
  if (check && process.env.CI !== "true") {
    console.error(`[proto] skipped check: ${msg}`)
    process.exit(0)
  }
  console.error(`[proto] ${msg}`)
  process.exit(1)
}

const generate = (ts, py) => {
  const res = spawnSync(
    protoc,
    [
      `--plugin=protoc-gen-ts_proto=${join(root, "node_modules", ".bin", "protoc-gen-ts_proto")}`,
      `--plugin=protoc-gen-grpc_python=${pyPlugin}`,
      `--ts_proto_out=${ts}`,
      "--ts_proto_opt=outputServices=grpc-js,esModuleInterop=true,importSuffix=.js,env=node,useOptionals=messages,forceLong=number,oneof=unions-value",
      `--python_out=${py}`,
      `--grpc_python_out=${py}`,
      `-I${join(root, "proto")}`,
      "snakepit_bridge.proto"
    ],
    { stdio: "inherit" }
  )
  if (res.status !== 0) process.exit(res.status ?? 1)
  // grpc_python_plugin writes an absolute import; the stubs live inside a package.
  const grpcPy = join(py, "snakepit_bridge_pb2_grpc.py")
  const text = readFileSync(grpcPy, "utf8").replace(
    /^import snakepit_bridge_pb2 as/m,
    "from . import snakepit_bridge_pb2 as"
  )
  spawnSync("sh", ["-c", `cat > '${grpcPy}'`], { input: text })
}

if (!check) {
  generate(tsOut, pyOut)
  console.error("[proto] generated")
} else {
  const tmp = mkdtempSync(join(tmpdir(), "snakepit-proto-"))
  const [ts, py] = [join(tmp, "ts"), join(tmp, "py")]
  cpSync(tsOut, ts, { recursive: true })
  cpSync(pyOut, py, { recursive: true })
  generate(ts, py)
  const stale = []
  for (const [fresh, committed] of [
    [ts, tsOut],
    [py, pyOut]
  ]) {
    for (const f of readdirSync(fresh).filter((f) => f.endsWith(".ts") || f.endsWith(".py"))) {
      if (readFileSync(join(fresh, f), "utf8") !== readFileSync(join(committed, f), "utf8")) stale.push(f)
    }
  }
  rmSync(tmp, { recursive: true, force: true })
  if (stale.length) {
    console.error(`[proto] generated files are stale: ${stale.join(", ")}. Run \`npm run proto:gen\` and commit.`)
    process.exit(1)
  }
  console.error("[proto] generated files are up to date")
}
