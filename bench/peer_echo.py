"""The python-shell peer of the benchmark: one JSON request per stdin line, one JSON reply per line.

The handler is the showcase adapter's `echo(value)`: it returns `value` unchanged.
Extra command-line arguments (the bench passes `--snakepit-run-id <id>` so that a leak
check can find this process) are ignored.
"""

import json
import sys


def echo(value):  # the same handler as ShowcaseAdapter.echo
    return value


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.write(json.dumps(echo(**request)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
