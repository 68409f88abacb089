"""The floor of the local channel's protocol: the same frames on the same inherited sockets (fds 3
and 4), answered by a plain loop with no worker runtime (no dispatcher, no threads, no cancel).

profile/layers.mjs runs it as the ``frame-floor`` case: what the framing and the socket pair cost
by themselves, between python-shell's JSON lines and the real worker (``local-raw``).
Extra command-line arguments (``--snakepit-run-id <id>`` and the worker's) are ignored.
"""

import json
import socket
import struct
from typing import Any

PREFIX = struct.Struct(">IBI")


def frame(header: dict[str, Any]) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(5 + len(text), 0, len(text)) + text


def main() -> None:
    calls = socket.socket(fileno=3)
    control = socket.socket(fileno=4)
    control.sendall(frame({"t": "ready", "protocol": 2}))
    buf = b""
    while True:
        data = calls.recv(65536)
        if not data:
            return
        buf += data
        while len(buf) >= 4:
            (length,) = struct.unpack_from(">I", buf)
            if len(buf) < 4 + length:
                break
            _, _, size = PREFIX.unpack_from(buf)
            header = json.loads(buf[9 : 9 + size])
            buf = buf[4 + length :]
            calls.sendall(
                frame({"t": "result", "i": header["i"], "v": header["a"]["value"]})
            )


if __name__ == "__main__":
    main()
