"""Frames of the local channel: length-prefixed JSON headers with raw binary blobs.

Layout of one frame (integers big-endian)::

    u32  length of everything after this field
    u8   flags (bit 0: the header holds tagged values, see values.py)
    u32  length of the JSON header
    ...  the JSON header (UTF-8): {"t": type, "i": id, ...}
    then, until the end of the frame, blobs: u32 length + bytes, each

The reader refuses a frame longer than the configured maximum before reading it.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any

from .values import ValueEncoder, decode_tagged

PREFIX = struct.Struct(">IBI")  # length, flags, header length
U32 = struct.Struct(">I")
FLAG_TAGGED = 1

# Below this size a frame is read through the shared buffer; above it, into its own.
_BIG = 1 << 20


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol."""


class FrameTooLarge(ProtocolError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


@dataclass
class Frame:
    header: dict[str, Any]
    blobs: list[bytes]
    tagged: bool

    def value(self, key: str, path: str) -> Any:
        """The header field ``key`` with its tagged values decoded."""
        value = self.header.get(key)
        return decode_tagged(value, self.blobs, path) if self.tagged else value


class FrameReader:
    """Reads whole frames from a blocking socket. One reader thread per socket."""

    def __init__(self, sock: socket.socket, max_frame: int) -> None:
        self._sock = sock
        self._max = max_frame
        self._buf = bytearray()
        self._pos = 0

    def _fill(self) -> bool:
        data = self._sock.recv(65536)
        if not data:
            return False
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        return True

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def read(self) -> Frame | None:
        """The next frame, or None at end of stream. Raises ProtocolError on garbage."""
        while self._available() < 4:
            if not self._fill():
                if self._available():
                    raise ProtocolError("the channel closed in the middle of a frame")
                return None
        (length,) = U32.unpack_from(self._buf, self._pos)
        if length > self._max:
            raise FrameTooLarge(length, self._max)
        if length < PREFIX.size - 4:
            raise ProtocolError(f"frame of {length} bytes is shorter than its prefix")
        total = 4 + length
        if total > _BIG and self._available() < total:
            return _parse(self._read_big(total))
        while self._available() < total:
            if not self._fill():
                raise ProtocolError("the channel closed in the middle of a frame")
        body = bytes(self._buf[self._pos : self._pos + total])
        self._pos += total
        return _parse(body)

    def _read_big(self, total: int) -> bytearray:
        frame = bytearray(total)
        have = self._available()
        frame[:have] = self._buf[self._pos :]
        self._buf.clear()
        self._pos = 0
        view = memoryview(frame)
        while have < total:
            n = self._sock.recv_into(view[have:], total - have)
            if n == 0:
                raise ProtocolError("the channel closed in the middle of a frame")
            have += n
        view.release()
        return frame


def _parse(body: bytes | bytearray) -> Frame:
    _, flags, header_length = PREFIX.unpack_from(body, 0)
    start = PREFIX.size
    end = start + header_length
    if end > len(body):
        raise ProtocolError("frame header runs past the end of the frame")
    try:
        header = json.loads(body[start:end])
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ProtocolError("frame header is not an object with a type")
    blobs: list[bytes] = []
    pos = end
    while pos < len(body):
        if pos + 4 > len(body):
            raise ProtocolError("blob length runs past the end of the frame")
        (size,) = U32.unpack_from(body, pos)
        pos += 4
        if pos + size > len(body):
            raise ProtocolError("blob runs past the end of the frame")
        blobs.append(bytes(body[pos : pos + size]))
        pos += size
    return Frame(header, blobs, bool(flags & FLAG_TAGGED))


def encode(header: dict[str, Any], max_frame: int) -> list[bytes | bytearray | memoryview]:
    """The parts of one frame, ready for ``sendmsg``; raises FrameTooLarge, TypeError, ValueError."""
    encoder = ValueEncoder(max_frame)
    text = encoder.dumps(header)
    parts: list[bytes | bytearray | memoryview] = [b"", text]
    length = PREFIX.size - 4 + len(text)
    for blob in encoder.blobs:
        size = memoryview(blob).nbytes
        parts.append(U32.pack(size))
        parts.append(blob)
        length += 4 + size
    if length > max_frame:
        raise FrameTooLarge(length, max_frame)
    parts[0] = PREFIX.pack(length, FLAG_TAGGED if encoder.tagged else 0, len(text))
    return parts


class FrameWriter:
    """Writes whole frames to a socket from any thread, one frame at a time."""

    def __init__(self, sock: socket.socket, max_frame: int) -> None:
        self._sock = sock
        self._max = max_frame
        self._lock = threading.Lock()

    @property
    def max_frame(self) -> int:
        return self._max

    def send(self, header: dict[str, Any]) -> None:
        """Encode and send; raises FrameTooLarge/TypeError/ValueError before writing anything."""
        self.send_parts(encode(header, self._max))

    def send_parts(self, parts: list[bytes | bytearray | memoryview]) -> None:
        if len(parts) == 2:
            data = b"".join(parts)  # one syscall for the common small frame
            with self._lock:
                self._sock.sendall(data)
            return
        with self._lock:
            for part in parts:
                self._sock.sendall(part)
