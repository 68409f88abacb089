#!/usr/bin/env node
// Per-call difference of two CPU profiles, by function (self time, main thread).
//
//   node --cpu-prof --cpu-prof-dir=/tmp/a bench/profile/layers.mjs 5000 raw
//   node --cpu-prof --cpu-prof-dir=/tmp/b bench/profile/layers.mjs 5000 pool
//   node bench/profile/diff.mjs /tmp/a/*.cpuprofile /tmp/b/*.cpuprofile <calls per run> [rows]
//
// <calls per run> is what layers.mjs prints; the result is microseconds per call that the
// second profile spends beyond the first, largest first.
import { readFileSync } from "node:fs"

const [fileA, fileB, callsArg, rowsArg] = process.argv.slice(2)
if (!fileA || !fileB || !callsArg) {
  console.error("usage: diff.mjs <a.cpuprofile> <b.cpuprofile> <calls> [rows]")
  process.exit(2)
}

const shortUrl = (url) => {
  const pkg = url.match(/node_modules\/\.pnpm\/[^/]+\/node_modules\/(.+)$/)
  return (pkg ? pkg[1] : url.replace(/.*\/packages\//, "packages/")).replace("dist/esm/", "")
}

/** Self time in microseconds by `function file:line`. */
const selfTimes = (file) => {
  const profile = JSON.parse(readFileSync(file, "utf8"))
  const byNode = new Map()
  for (const [i, id] of profile.samples.entries()) byNode.set(id, (byNode.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0))
  const times = new Map()
  for (const node of profile.nodes) {
    const { functionName, url, lineNumber } = node.callFrame
    const key = `${functionName || "(anonymous)"} ${shortUrl(url)}:${lineNumber + 1}`
    times.set(key, (times.get(key) ?? 0) + (byNode.get(node.id) ?? 0))
  }
  return times
}

const a = selfTimes(fileA)
const b = selfTimes(fileB)
const calls = Number(callsArg)
const rows = [...new Set([...a.keys(), ...b.keys()])]
  .filter((key) => !key.startsWith("(idle)"))
  .map((key) => [key, ((b.get(key) ?? 0) - (a.get(key) ?? 0)) / calls])
  .sort((x, y) => y[1] - x[1])
const total = rows.reduce((sum, [, us]) => sum + us, 0)
console.log(`main-thread CPU per call, second minus first: ${total.toFixed(1)} µs`)
for (const [key, us] of rows.slice(0, Number(rowsArg ?? 30))) console.log(`${us.toFixed(2).padStart(8)}  ${key}`)
