"""The local transport: the worker's private channel to its host.

Two inherited socket pairs, no listening socket: only the host and this process hold them.

* The *call* socket (fd 3) carries ``call`` frames in, and ``result`` / ``error`` /
  ``chunk`` / ``end`` / ``cancelled`` frames out. Its reader thread runs a sync tool
  itself when the host allows one call at a time (``--concurrency 1``), which saves a
  thread hand-off per call; otherwise it hands calls to a pool of ``concurrency`` threads.
* The *control* socket (fd 4) carries everything that must get through while tools run:
  ``cancel``, ``credit``, ``health``, ``describe``, ``cleanup``, ``stop``, and the
  replies to the worker's own ``host_call`` / ``host_list``. Its thread never runs a tool.

The frame layout is in frames.py; the message catalogue is docs/protocol.md.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from . import errors
from .dispatch import Call, Dispatcher, shielded
from .errors import ToolFailure
from .frames import Frame, FrameReader, FrameTooLarge, FrameWriter, ProtocolError
from .host_bridge import DEFAULT_TIMEOUT_S, HostBridge, HostToolError, check_args, tool_error
from .values import BadValue

log = logging.getLogger("snakepit_bridge")

PROTOCOL_VERSION = 2
CALL_FD = 3
CONTROL_FD = 4
EXIT_PROTOCOL_ERROR = 6

# How long a waiting host call sleeps between looks at its call's cancel flag.
_CANCEL_POLL_S = 0.05


class NoChannel(Exception):
    """The worker was started without the local channel's sockets."""


def open_socket(fd: int) -> socket.socket:
    """The inherited socket on ``fd``, made non-inheritable so tools' children never get it."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise NoChannel(
            f"fd {fd} is not a socket ({exc.strerror}): the local transport needs the host to pass "
            f"socket pairs as fds {CALL_FD} and {CONTROL_FD}; start workers from Snakepit, or use --transport grpc"
        ) from exc
    sock.set_inheritable(False)
    sock.setblocking(True)
    return sock


def _unsendable(tool: str, exc: BaseException, max_frame: int, value: Any) -> ToolFailure:
    if isinstance(exc, FrameTooLarge):
        return ToolFailure(
            errors.UNSERIALIZABLE_RESULT,
            "ResultTooLarge",
            f"the result of tool {tool!r} is {exc.size} bytes, over the limit of {max_frame} bytes (maxMessageBytes)",
        )
    return errors.unsendable(tool, exc, value, max_frame)


def _int(frame: Frame, key: str) -> int:
    """An integer field of a frame; anything else is the host breaking the protocol."""
    value = frame.header.get(key)
    if type(value) is not int:
        raise ProtocolError(f"a {frame.header.get('t')!r} frame needs an integer {key!r}, not {value!r}")
    return value


class _FrameSink:
    """A call's outcome as frames on the call socket."""

    __slots__ = ("_id", "_tool", "_writer")

    def __init__(self, writer: FrameWriter, call_id: int, tool: str) -> None:
        self._writer = writer
        self._id = call_id
        self._tool = tool

    def _send(self, header: dict[str, Any]) -> bool:
        try:
            self._writer.send(header)
            return True
        except (FrameTooLarge, TypeError, ValueError, RecursionError) as exc:
            self.failure(_unsendable(self._tool, exc, self._writer.max_frame, header.get("v")))
            return False

    def result(self, value: Any) -> None:
        self._send({"t": "result", "i": self._id, "v": value})

    def chunk(self, value: Any) -> bool:
        return self._send({"t": "chunk", "i": self._id, "v": value})

    def failure(self, failure: ToolFailure) -> None:
        self._writer.send({"t": "error", "i": self._id, "e": failure.to_json()})

    def end(self) -> None:
        self._writer.send({"t": "end", "i": self._id})

    def cancelled(self) -> None:
        self._writer.send({"t": "cancelled", "i": self._id})


class ChannelHostBridge(HostBridge):
    """Host tools over the control socket: ``host_call`` out, ``host_result`` back."""

    def __init__(self, writer: FrameWriter, worker_id: str) -> None:
        self.worker_id = worker_id
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Frame]] = {}
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return True

    def resolve(self, frame: Frame) -> None:
        call_id = _int(frame, "i")
        with self._lock:
            future = self._pending.pop(call_id, None)
        if future is not None:
            future.set_result(frame)

    def _start(self, header: dict[str, Any]) -> tuple[int, Future[Frame]]:
        call_id = next(self._ids)
        future: Future[Frame] = Future()
        with self._lock:
            self._pending[call_id] = future
        try:
            self._writer.send({**header, "i": call_id})
        except (FrameTooLarge, TypeError, ValueError, RecursionError) as exc:
            with self._lock:
                self._pending.pop(call_id, None)
            raise TypeError(f"arguments of host tool {header.get('tool', '')!r} cannot be sent: {exc}") from exc
        return call_id, future

    def _abandon(self, call_id: int) -> None:
        with self._lock:
            self._pending.pop(call_id, None)
        self._writer.send({"t": "host_cancel", "i": call_id})

    def _wait(self, call_id: int, future: Future[Frame], timeout: float | None, cancelled: Any) -> Frame:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                # In slices, so that the calling tool can be cancelled while it waits.
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise FutureTimeout()
                try:
                    return future.result(_CANCEL_POLL_S if remaining is None else min(remaining, _CANCEL_POLL_S))
                except FutureTimeout:
                    if cancelled is not None and cancelled.is_set():
                        raise errors.CallCancelled() from None
        except BaseException:
            self._abandon(call_id)
            raise

    @staticmethod
    def _outcome(name: str, frame: Frame) -> Any:
        error = frame.header.get("e")
        if isinstance(error, dict):
            raise tool_error(
                name,
                str(error.get("kind", "")),
                str(error.get("type", "")),
                str(error.get("message", "")),
                str(error.get("traceback", "")),
                [str(a) for a in error.get("available", [])],
            )
        return frame.value("v", "result")

    def _header(
        self, name: str, args: Mapping[str, Any] | None, session_id: str | None, attachments: Any
    ) -> dict[str, Any]:
        header: dict[str, Any] = {"t": "host_call", "tool": name, "a": check_args(name, args)}
        if session_id:
            header["s"] = session_id
        if attachments:
            header["att"] = dict(attachments)
        return header

    def call(
        self,
        name: str,
        args: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        attachments: Mapping[str, bytes] | None = None,
        *,
        worker_id: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        cancelled: Any = None,
    ) -> Any:
        # Shielded: a cancel must not strike while a frame is half-written; the wait looks at the
        # cancel flag itself, and the shield raises CallCancelled once it ends.
        with shielded():
            call_id, future = self._start(self._header(name, args, session_id, attachments))
            try:
                frame = self._wait(call_id, future, timeout, cancelled)
            except FutureTimeout:
                raise HostToolError(
                    "DeadlineExceeded", f"host tool {name!r} did not answer within {timeout} s", "timeout"
                ) from None
        return self._outcome(name, frame)

    async def acall(
        self,
        name: str,
        args: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        attachments: Mapping[str, bytes] | None = None,
        *,
        worker_id: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
    ) -> Any:
        import asyncio

        call_id, future = self._start(self._header(name, args, session_id, attachments))
        try:
            frame = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            self._abandon(call_id)
            raise HostToolError(
                "DeadlineExceeded", f"host tool {name!r} did not answer within {timeout} s", "timeout"
            ) from None
        except BaseException:
            self._abandon(call_id)
            raise
        return self._outcome(name, frame)

    def list_tools(self, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
        with shielded():
            call_id, future = self._start({"t": "host_list"})
            try:
                frame = self._wait(call_id, future, timeout, None)
            except FutureTimeout:
                raise HostToolError(
                    "DeadlineExceeded", f"the host did not list its tools within {timeout} s", "timeout"
                ) from None
        return list(self._outcome("list", frame) or [])

    async def alist_tools(self, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
        import asyncio

        call_id, future = self._start({"t": "host_list"})
        try:
            frame = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except BaseException:
            self._abandon(call_id)
            raise
        return list(self._outcome("list", frame) or [])


class LocalTransport:
    """Serves a dispatcher over the call and control sockets until stopped or the host is gone."""

    def __init__(
        self, call_sock: socket.socket, control_sock: socket.socket, *, max_frame: int, concurrency: int
    ) -> None:
        self._call_reader = FrameReader(call_sock, max_frame)
        self._control_reader = FrameReader(control_sock, max_frame)
        self._call_sock = call_sock
        self.call_writer = FrameWriter(call_sock, max_frame)
        self.control_writer = FrameWriter(control_sock, max_frame)
        self._concurrency = concurrency
        self._threads: ThreadPoolExecutor | None = None
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._inline: Call | None = None
        self._dispatcher: Dispatcher | None = None
        self._host_bridge: ChannelHostBridge | None = None
        self._on_stop: Callable[[float], None] = lambda grace: None

    def host_bridge(self, worker_id: str, available: bool) -> HostBridge:
        """The bridge tools call host tools through; one that refuses when the host has none."""
        if not available:
            return HostBridge()
        self._host_bridge = ChannelHostBridge(self.control_writer, worker_id)
        return self._host_bridge

    def start_control(self, on_stop: Callable[[float], None]) -> None:
        """Starts serving the control socket (before the adapter starts, so it may call host tools)."""
        self._on_stop = on_stop
        threading.Thread(target=self._serve_control, name="snakepit-control", daemon=True).start()

    def announce(self, dispatcher: Dispatcher, python_version: str) -> None:
        self._dispatcher = dispatcher
        dispatcher.set_blocked_probe(self._blocked)
        if self._concurrency > 1:
            self._threads = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="snakepit-tool")
        self.control_writer.send(
            {
                "t": "ready",
                "pid": os.getpid(),
                "adapter": dispatcher.adapter_name,
                "protocol": PROTOCOL_VERSION,
                "python": python_version,
                "tools": len(dispatcher.tools),
            }
        )

    # -- calls ---------------------------------------------------------------- #

    def serve_calls(self) -> None:
        """The call socket's reader loop (the main thread). Returns when the host has gone."""
        while True:
            frame = self._call_reader.read()
            if frame is None:
                return
            if frame.header["t"] != "call":
                raise ProtocolError(f"unexpected {frame.header['t']!r} frame on the call socket")
            self._start_call(frame)

    def _start_call(self, frame: Frame) -> None:
        dispatcher = self._dispatcher
        assert dispatcher is not None
        header = frame.header
        call_id = _int(frame, "i")
        tool = header.get("tool")
        window = _int(frame, "w") if "w" in header else 16
        if not isinstance(tool, str) or window < 1:
            raise ProtocolError("a call frame needs a tool name, and a window of at least 1")
        sink = _FrameSink(self.call_writer, call_id, tool)
        try:
            args = frame.value("a", "args") if "a" in header else {}
            attachments = frame.value("att", "attachments") if "att" in header else None
            call, info, kwargs = dispatcher.prepare(
                call_id,
                tool,
                args,
                session=str(header.get("s", "")),
                stream=bool(header.get("stream", False)),
                window=window,
                attachments=attachments,
                session_moved=header.get("sm") is True,
            )
        except ToolFailure as failure:
            sink.failure(failure)
            return
        except BadValue as exc:
            sink.failure(ToolFailure(errors.INVALID_ARGUMENTS, "ValueError", str(exc), path=exc.path))
            return
        if info.is_async:
            dispatcher.run(call, info, kwargs, sink)
        elif self._threads is None:
            self._inline = call
            try:
                dispatcher.run(call, info, kwargs, sink)
            finally:
                self._inline = None
        else:
            with self._busy_lock:
                self._busy += 1
            self._threads.submit(self._run_pooled, call, info, kwargs, sink)

    def _run_pooled(self, call: Call, info: Any, kwargs: dict[str, Any], sink: _FrameSink) -> None:
        assert self._dispatcher is not None
        try:
            self._dispatcher.run(call, info, kwargs, sink)
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _blocked(self) -> str | None:
        """Why a new call could not start now, if it could not."""
        if self._threads is not None:
            with self._busy_lock:
                busy = self._busy
            return (
                f"all {self._concurrency} tool threads are busy and calls are waiting"
                if busy > self._concurrency
                else None
            )
        inline = self._inline
        if inline is None:
            return None
        readable, _, _ = select.select([self._call_sock], [], [], 0)
        if readable:
            return f"the tool thread is busy with {inline.tool!r} and a call is waiting"
        return None

    # -- control -------------------------------------------------------------- #

    def _serve_control(self) -> None:
        try:
            while True:
                frame = self._control_reader.read()
                if frame is None:
                    from .hygiene import die_with_host

                    die_with_host("the control channel closed")
                self._control(frame)
        except ProtocolError as exc:
            log.error("protocol error on the control channel: %s", exc)
            from .hygiene import exit_now

            exit_now(EXIT_PROTOCOL_ERROR)
        except OSError as exc:
            from .hygiene import die_with_host

            die_with_host(f"the control channel failed ({exc})")

    def _reply(self, frame: Frame, value: Any) -> None:
        self.control_writer.send({"t": "reply", "i": _int(frame, "i"), "v": value})

    def _control(self, frame: Frame) -> None:
        kind = frame.header["t"]
        dispatcher = self._dispatcher
        if kind == "host_result":
            if self._host_bridge is not None:
                self._host_bridge.resolve(frame)
            return
        if dispatcher is None:
            raise ProtocolError(f"{kind!r} frame before the worker was ready")
        if kind == "cancel":
            dispatcher.cancel(_int(frame, "i"))
        elif kind == "credit":
            dispatcher.grant(_int(frame, "i"), _int(frame, "n"))
        elif kind == "health":
            self._reply(frame, dispatcher.health())
        elif kind == "describe":
            self._reply(frame, {"adapter": dispatcher.adapter_name, "tools": dispatcher.describe()})
        elif kind == "cleanup":
            self._reply(frame, {"existed": dispatcher.cleanup_session(str(frame.header.get("s", "")))})
        elif kind == "stop":
            self._reply(frame, {})
            grace = max(0, _int(frame, "grace_ms")) / 1000
            threading.Thread(target=self._on_stop, args=(grace,), name="snakepit-stop", daemon=True).start()
        else:
            raise ProtocolError(f"unknown frame type {kind!r}")
