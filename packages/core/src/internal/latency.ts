/**
 * Per-tool call latency over a bounded window: the last `size` durations in a ring, and
 * percentiles computed only when someone asks (`snakepit top`), never on the call path.
 *
 * @internal
 */
import { ToolLatency } from "../PoolReport.js"

/** Durations of the last calls kept per tool. */
export const WINDOW = 1024

class Ring {
  readonly durations = new Float64Array(WINDOW)
  calls = 0
  errors = 0

  record(ms: number, failed: boolean): void {
    this.durations[this.calls % WINDOW] = ms
    this.calls++
    if (failed) this.errors++
  }
}

/** The nearest-rank percentile `p` (0..100) of ascending `sorted`. */
const percentile = (sorted: Float64Array, p: number): number =>
  sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!

/** The latency windows of one pool's tools. */
export class Latencies {
  private readonly tools = new Map<string, Ring>()

  /** One call of `tool` took `ms`. */
  record(tool: string, ms: number, failed: boolean): void {
    let ring = this.tools.get(tool)
    if (ring === undefined) {
      ring = new Ring()
      this.tools.set(tool, ring)
    }
    ring.record(ms, failed)
  }

  /** Every tool's summary, by name. */
  summaries(): ReadonlyArray<ToolLatency> {
    return [...this.tools.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([tool, ring]) => {
        const window = Math.min(ring.calls, WINDOW)
        const sorted = ring.durations.slice(0, window).sort()
        const round = (ms: number) => Math.round(ms * 1000) / 1000
        return new ToolLatency({
          tool,
          calls: ring.calls,
          errors: ring.errors,
          window,
          p50Ms: round(percentile(sorted, 50)),
          p99Ms: round(percentile(sorted, 99)),
          maxMs: round(window === 0 ? 0 : sorted[window - 1]!)
        })
      })
  }
}
