/**
 * A live pool as text (the tables `status` and `top` print) and as JSON.
 *
 * @internal
 */
import { type PoolEvent, PoolReport } from "@snakepit/core"
import { Schema } from "effect"
import { table } from "./format.js"

/** Bytes as `45.2 MB`, or "-" when unknown. */
export const formatBytes = (bytes: number | null): string =>
  bytes === null
    ? "-"
    : bytes >= 1024 * 1024 * 1024
      ? `${(bytes / 1024 ** 3).toFixed(1)} GB`
      : `${(bytes / 1024 ** 2).toFixed(1)} MB`

/** Milliseconds as `3h12m`, `4m05s`, `12s`. */
export const formatAge = (ms: number): string => {
  const seconds = Math.floor(ms / 1000)
  if (seconds < 60) return `${seconds}s`
  const minutes = Math.floor(seconds / 60)
  if (minutes < 60) return `${minutes}m${String(seconds % 60).padStart(2, "0")}s`
  return `${Math.floor(minutes / 60)}h${String(minutes % 60).padStart(2, "0")}m`
}

const ms = (value: number): string => (value < 10 ? value.toFixed(2) : value.toFixed(1))

/** One pool: its line, its workers, its tools' latency; indented by `indent`. */
export const renderPool = (report: PoolReport, indent = "  "): ReadonlyArray<string> => {
  const s = report.stats
  const lines = [
    ...table(
      [
        [
          "POOL",
          "SIZE",
          "MIN",
          "MAX",
          "READY",
          "BUSY",
          "QUEUED",
          "REQUESTS",
          "ERRORS",
          "TIMEOUTS",
          "RESTARTS",
          "DRAINING"
        ],
        [
          report.pool,
          String(s.size),
          String(report.min),
          String(report.max),
          String(s.ready),
          String(s.busy),
          String(s.queued),
          String(s.requests),
          String(s.errors),
          String(s.queueTimeouts),
          String(s.restarts),
          report.draining ? "yes" : "no"
        ]
      ],
      indent
    )
  ]
  lines.push(
    ...table(
      [
        ["WORKER", "PID", "STATE", "CALLS", "RSS", "AGE", "RUNNING"],
        ...report.workers.map((w) => [
          w.id,
          String(w.pid),
          w.state,
          String(w.calls),
          formatBytes(w.rssBytes),
          formatAge(w.ageMs),
          w.running.length === 0 ? "-" : w.running.join(",")
        ])
      ],
      `${indent}  `
    )
  )
  if (report.tools.length > 0) {
    lines.push(
      ...table(
        [
          ["TOOL", "CALLS", "ERRORS", "P50 MS", "P99 MS", "MAX MS"],
          ...report.tools.map((t) => [t.tool, String(t.calls), String(t.errors), ms(t.p50Ms), ms(t.p99Ms), ms(t.maxMs)])
        ],
        `${indent}  `
      )
    )
  }
  return lines
}

/** A report as JSON-ready data (dates as ISO strings). */
export const poolJson = Schema.encodeSync(PoolReport)

/** One event as a line of text. */
export const renderEvent = (runId: string, event: PoolEvent): string => {
  const head = `${event.at.toISOString()}  ${runId}  ${event.pool}  `
  switch (event._tag) {
    case "Started":
      return `${head}started     ${event.workerId}`
    case "Ready":
      return `${head}ready       ${event.workerId} pid ${event.pid}`
    case "StartFailed":
      return `${head}start-failed ${event.workerId} (${event.reason}): ${event.detail}`
    case "Restarted":
      return `${head}restarted   ${event.workerId} pid ${event.pid}, replacing ${event.replaces}`
    case "Crashed":
      return `${head}crashed     ${event.workerId} pid ${event.pid} (${event.signal ?? `exit ${event.exitCode}`})`
    case "Unhealthy":
      return `${head}unhealthy   ${event.workerId} pid ${event.pid}: ${event.detail}`
    case "Recycled":
      return `${head}recycled    ${event.workerId} pid ${event.pid} (${event.reason})`
    case "Stopped":
      return `${head}stopped     ${event.workerId} pid ${event.pid}`
    case "Retired":
      return `${head}retired     ${event.workerId} pid ${event.pid} (${event.reason})`
    case "QueueFull":
      return `${head}queue-full  ${event.max} waiting`
    case "Resized":
      return `${head}resized     min ${event.min} max ${event.max} (was min ${event.previousMin} max ${event.previousMax})`
    case "Draining":
      return `${head}draining    ${event.inFlight} calls in flight`
    case "Drained":
      return `${head}drained`
  }
}
