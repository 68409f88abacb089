"""frames.py: length-prefixed frames, read whole however the bytes arrive, and refused when they are not frames."""

from __future__ import annotations

import socket
import struct
import threading
import unittest
from typing import Any

from snakepit_bridge.frames import (
    FLAG_TAGGED,
    PREFIX,
    U32,
    FrameReader,
    FrameTooLarge,
    FrameWriter,
    ProtocolError,
    encode,
)

LIMIT = 8 * 1024 * 1024


class ChunkedSocket:
    """Hands out ``data`` at most ``chunk`` bytes per receive, as a slow peer would."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._chunk = chunk
        self.receives = 0

    def recv(self, n: int) -> bytes:
        self.receives += 1
        size = min(n, self._chunk, len(self._data) - self._pos)
        out = bytes(self._data[self._pos : self._pos + size])
        self._pos += size
        return out

    def recv_into(self, view: memoryview, n: int) -> int:
        data = self.recv(n)
        view[: len(data)] = data
        return len(data)


def frame_bytes(header: dict[str, Any], limit: int = LIMIT) -> bytes:
    return b"".join(bytes(part) for part in encode(header, limit))


def raw_frame(header_text: bytes, *, flags: int = 0, blobs: tuple[bytes, ...] = (), length: int | None = None) -> bytes:
    body = b"".join(U32.pack(len(b)) + b for b in blobs)
    total = PREFIX.size - 4 + len(header_text) + len(body)
    return PREFIX.pack(total if length is None else length, flags, len(header_text)) + header_text + body


def reader_of(data: bytes, chunk: int = 1 << 20, limit: int = LIMIT) -> FrameReader:
    return FrameReader(ChunkedSocket(data, chunk), limit)  # type: ignore[arg-type]


class RoundTripTest(unittest.TestCase):
    def setUp(self) -> None:
        self.a, self.b = socket.socketpair()
        self.a.settimeout(10)
        self.b.settimeout(10)

    def tearDown(self) -> None:
        self.a.close()
        self.b.close()

    def test_header_and_blobs_round_trip_over_a_socket(self) -> None:
        writer = FrameWriter(self.a, LIMIT)
        reader = FrameReader(self.b, LIMIT)
        writer.send({"t": "call", "i": 1, "tool": "echo", "a": {"x": [1, "two"], "b": b"\x00\xff", "e": b""}})
        writer.send({"t": "result", "i": 1, "v": 42})
        first = reader.read()
        assert first is not None
        self.assertTrue(first.tagged)
        self.assertEqual(first.blobs, [b"\x00\xff", b""])
        self.assertEqual(first.value("a", "args"), {"x": [1, "two"], "b": b"\x00\xff", "e": b""})
        second = reader.read()
        assert second is not None
        self.assertFalse(second.tagged)
        self.assertEqual((second.header, second.blobs), ({"t": "result", "i": 1, "v": 42}, []))
        self.a.shutdown(socket.SHUT_WR)
        self.assertIsNone(reader.read(), "end of stream at a frame boundary")

    def test_untagged_frames_leave_lookalike_objects_alone(self) -> None:
        # Only a frame flagged as tagged is walked: a plain frame is taken as it is.
        data = raw_frame(b'{"t":"result","i":1,"v":{"__snakepit__":"bytes","blob":0}}')
        frame = reader_of(data).read()
        assert frame is not None
        self.assertEqual(frame.value("v", "result"), {"__snakepit__": "bytes", "blob": 0})

    def test_many_threads_share_one_writer_without_interleaving(self) -> None:
        writer = FrameWriter(self.a, LIMIT)
        reader = FrameReader(self.b, LIMIT)
        threads, per_thread = 6, 40
        blob = bytes(range(256)) * 64  # big enough that one frame takes several sends

        def send(n: int) -> None:
            for i in range(per_thread):
                writer.send({"t": "chunk", "i": n, "v": {"seq": i, "data": blob}})

        senders = [threading.Thread(target=send, args=(n,)) for n in range(threads)]
        received: dict[int, list[int]] = {n: [] for n in range(threads)}

        def receive() -> None:
            for _ in range(threads * per_thread):
                frame = reader.read()
                assert frame is not None
                value = frame.value("v", "chunk")
                self.assertEqual(value["data"], blob)
                received[frame.header["i"]].append(value["seq"])

        receiver = threading.Thread(target=receive)
        receiver.start()
        for t in senders:
            t.start()
        for t in senders:
            t.join(30)
        receiver.join(30)
        self.assertFalse(receiver.is_alive())
        self.assertEqual(received, {n: list(range(per_thread)) for n in range(threads)})


class PartialReadTest(unittest.TestCase):
    def test_a_frame_arriving_one_byte_at_a_time(self) -> None:
        data = frame_bytes({"t": "call", "i": 7, "a": {"b": b"blob"}}) + frame_bytes({"t": "end", "i": 7})
        sock = ChunkedSocket(data, 1)
        reader = FrameReader(sock, LIMIT)  # type: ignore[arg-type]
        first = reader.read()
        second = reader.read()
        assert first is not None and second is not None
        self.assertEqual(first.value("a", "args"), {"b": b"blob"})
        self.assertEqual(second.header, {"t": "end", "i": 7})
        self.assertIsNone(reader.read())
        self.assertGreaterEqual(sock.receives, len(data))

    def test_a_big_frame_in_pieces(self) -> None:
        blob = bytes(range(251)) * (3 * 1024 * 1024 // 251)  # over the 1 MiB "big frame" threshold
        data = frame_bytes({"t": "result", "i": 1, "v": blob}) + frame_bytes({"t": "end", "i": 2})
        for chunk in (65536, 4096 + 3):
            with self.subTest(chunk=chunk):
                reader = reader_of(data, chunk)
                frame = reader.read()
                assert frame is not None
                self.assertEqual(frame.value("v", "result"), blob)
                after = reader.read()
                assert after is not None
                self.assertEqual(after.header, {"t": "end", "i": 2})

    def test_end_of_stream_inside_a_frame_is_a_protocol_error(self) -> None:
        data = frame_bytes({"t": "result", "i": 1, "v": "x" * 100})
        for cut in (2, 4, 7, len(data) - 1):
            with self.subTest(cut=cut), self.assertRaisesRegex(ProtocolError, "closed in the middle of a frame"):
                reader_of(data[:cut], 3).read()


class BadInputTest(unittest.TestCase):
    def test_a_frame_over_the_limit_is_refused_before_its_body_is_read(self) -> None:
        # Only the length prefix is there: the reader must not wait for the body.
        prefix = U32.pack(1024 * 1024)
        sock = ChunkedSocket(prefix, 1 << 20)
        with self.assertRaises(FrameTooLarge) as raised:
            FrameReader(sock, 1024).read()  # type: ignore[arg-type]
        self.assertEqual((raised.exception.size, raised.exception.limit), (1024 * 1024, 1024))
        self.assertIsInstance(raised.exception, ProtocolError)

    def test_the_writer_refuses_a_frame_over_the_limit_and_sends_nothing(self) -> None:
        a, b = socket.socketpair()
        try:
            writer = FrameWriter(a, 1024)
            with self.assertRaises(FrameTooLarge):
                writer.send({"t": "result", "i": 1, "v": b"x" * 2048})
            with self.assertRaises(FrameTooLarge):
                writer.send({"t": "result", "i": 1, "v": "x" * 2048})
            writer.send({"t": "end", "i": 1})
            b.settimeout(10)
            frame = FrameReader(b, 1024).read()
            assert frame is not None
            self.assertEqual(frame.header, {"t": "end", "i": 1}, "the refused frames left nothing on the wire")
        finally:
            a.close()
            b.close()

    def test_a_frame_exactly_at_the_limit_passes(self) -> None:
        header = {"t": "result", "i": 1, "v": "x"}
        size = len(frame_bytes(header)) - 4
        frame = reader_of(frame_bytes(header, size), limit=size).read()
        assert frame is not None
        self.assertEqual(frame.header, header)
        with self.assertRaises(FrameTooLarge):
            encode(header, size - 1)

    def test_a_garbage_prefix_is_refused(self) -> None:
        for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff\xff\xff\xff", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
            with self.subTest(garbage=garbage), self.assertRaises(ProtocolError):
                reader_of(garbage).read()

    def test_a_length_shorter_than_the_prefix(self) -> None:
        with self.assertRaisesRegex(ProtocolError, "shorter than its prefix"):
            reader_of(struct.pack(">I", 3) + b"abc").read()

    def test_a_header_that_is_not_json(self) -> None:
        for text in (b"{not json", b"\xff\xfe\x00", b"", b"[" * 100_000):
            with self.subTest(text=text[:10]), self.assertRaisesRegex(ProtocolError, "not JSON"):
                reader_of(raw_frame(text)).read()

    def test_a_header_that_is_not_an_object_with_a_type(self) -> None:
        for text in (b"[1,2]", b'"t"', b'{"i":1}', b'{"t":5}', b"null"):
            with self.subTest(text=text), self.assertRaisesRegex(ProtocolError, "not an object with a type"):
                reader_of(raw_frame(text)).read()

    def test_lengths_that_run_past_the_frame(self) -> None:
        header = b'{"t":"end","i":1}'
        with self.assertRaisesRegex(ProtocolError, "header runs past the end"):
            bad = bytearray(raw_frame(header))
            struct.pack_into(">I", bad, 5, len(header) + 10)
            reader_of(bytes(bad)).read()
        with self.assertRaisesRegex(ProtocolError, "blob runs past the end"):
            good = raw_frame(header, flags=FLAG_TAGGED, blobs=(b"abcd",))
            bad = bytearray(good)
            struct.pack_into(">I", bad, PREFIX.size + len(header), 100)
            reader_of(bytes(bad)).read()
        with self.assertRaisesRegex(ProtocolError, "blob length runs past the end"):
            # Two stray bytes after the header where a blob length (4 bytes) should be.
            stray = PREFIX.pack(PREFIX.size - 4 + len(header) + 2, 0, len(header)) + header + b"\x00\x01"
            reader_of(stray).read()


if __name__ == "__main__":
    unittest.main()
