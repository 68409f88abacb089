/**
 * A bounded tail of a worker's stderr, kept for error messages.
 */

/** The last `maxLines` lines written, oldest first. */
export class LineTail {
  private readonly lines: Array<string> = []
  constructor(private readonly maxLines: number) {}

  push(line: string): void {
    this.lines.push(line)
    if (this.lines.length > this.maxLines) this.lines.shift()
  }

  text(): string {
    return this.lines.join("\n")
  }
}

/** The last Python traceback in `text`, from "Traceback (most recent call last):" to its exception line. */
export const extractTraceback = (text: string): string | null => {
  const start = text.lastIndexOf("Traceback (most recent call last):")
  if (start < 0) return null
  const lines = text.slice(start).split("\n")
  // The traceback ends at the first unindented line after the header: the exception itself.
  const end = lines.findIndex((line, i) => i > 0 && line.length > 0 && !line.startsWith(" "))
  return lines.slice(0, end < 0 ? lines.length : end + 1).join("\n")
}
