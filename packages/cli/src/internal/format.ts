/**
 * Plain-text formatting for terminal output: aligned columns, dates, counts.
 *
 * @internal
 */

/** Rows padded into aligned columns (the last column is not padded). */
export const table = (rows: ReadonlyArray<ReadonlyArray<string>>, indent = ""): ReadonlyArray<string> => {
  const widths: Array<number> = []
  for (const row of rows) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, cell.length)
    })
  }
  return rows.map((row) =>
    (indent + row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ")).trimEnd()
  )
}

/** A date as `2026-11-22 10:31:05Z` (UTC, seconds), or "-" for none. */
export const formatDate = (date: Date | null): string =>
  date === null
    ? "-"
    : date
        .toISOString()
        .replace("T", " ")
        .replace(/\.\d+Z$/, "Z")

/** `1 run`, `2 runs`. */
export const count = (n: number, singular: string, plural = `${singular}s`): string =>
  `${n} ${n === 1 ? singular : plural}`

/** A shell-safe rendering of a path for a suggested command line. */
export const shellQuote = (value: string): string =>
  /^[\w@%+=:,./-]+$/.test(value) ? value : `'${value.replaceAll("'", "'\\''")}'`
