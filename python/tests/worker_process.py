"""Start real worker processes for tests, talk to them as the host does, and make sure they are gone after.

* :class:`LocalWorker` is the host's side of the local transport: two socket pairs whose
  worker ends become the worker's fds 3 (calls) and 4 (control).
* :class:`GrpcWorker` starts ``--transport grpc`` with a bootstrap line on stdin and reads
  the readiness line from stdout (the gRPC client itself lives in the gRPC test module,
  so that this module imports without grpcio).

Every wait is bounded: sockets have a timeout, process waits a deadline.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from snakepit_bridge.frames import Frame, FrameReader, FrameWriter

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 10.0
MAX_FRAME = 64 * 1024 * 1024
ODD_ADAPTER = "tests.fixture_adapters:OddAdapter"
TERMINAL = ("result", "error", "end", "cancelled")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Look at ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """True while pid is a live (non-zombie) process."""
    fields = _stat_fields(pid)
    if fields is not None:
        return fields[0] not in (b"Z", b"X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def python_env(extra: dict[str, str] | None = None, *, watch_stdin: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_DIR
    env.pop("SNAKEPIT_NO_STDIN_WATCH", None)
    if not watch_stdin:
        env["SNAKEPIT_NO_STDIN_WATCH"] = "1"
    env.update(extra or {})
    return env


class _Process:
    """What both kinds of worker share: the process, its stderr, and a cleanup that leaves nothing."""

    proc: subprocess.Popen[bytes]

    def __init__(self) -> None:
        # Owned by this object and closed in close(), not in a with block.
        self.stderr_file = tempfile.TemporaryFile()
        self.stdout_file = tempfile.TemporaryFile()
        # Processes a test learnt of (a tool's children): killed at close, whatever happened.
        self.extra_pids: list[int] = []
        self._stderr_text = ""

    def command(self, *args: str, adapter: str | None, transport: str) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "snakepit_bridge",
            "--transport",
            transport,
            "--worker-id",
            "test-worker",
            "--snakepit-run-id",
            "test-run",
        ]
        if adapter:
            cmd += ["--adapter", adapter]
        return cmd + list(args)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker did not exit within {timeout}s; stderr:\n{self.stderr()}") from None

    def stderr(self) -> str:
        if self.stderr_file.closed:
            return self._stderr_text
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode(errors="replace")

    def stdout(self) -> bytes:
        self.stdout_file.seek(0)
        return self.stdout_file.read()

    def _close_channels(self) -> None:
        """Let the worker see its host go (it then exits taking its descendants along)."""

    def close(self) -> None:
        """End the worker and everything it started; never leaves a process behind."""
        self._close_channels()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            # The worker leaves on its own when its host goes, killing its descendants.
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in self.extra_pids:
            kill_quietly(pid)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr_text = self.stderr()
        self.stderr_file.close()
        self.stdout_file.close()


class LocalWorker(_Process):
    """``python -m snakepit_bridge`` on the local transport, with this test as its host."""

    def __init__(
        self,
        *args: str,
        adapter: str | None = ODD_ADAPTER,
        watch_stdin: bool = True,
        env: dict[str, str] | None = None,
        max_frame: int = MAX_FRAME,
    ) -> None:
        super().__init__()
        self.call_sock, call_child = socket.socketpair()
        self.control_sock, control_child = socket.socketpair()
        for sock in (self.call_sock, self.control_sock):
            sock.settimeout(TIMEOUT)
        child_fds = (call_child.fileno(), control_child.fileno())

        def place_fds() -> None:
            # Out of the way first, so that placing one cannot overwrite the other.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in child_fds]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        try:
            self.proc = subprocess.Popen(
                self.command(*args, adapter=adapter, transport="local"),
                stdin=subprocess.PIPE,
                stdout=self.stdout_file,
                stderr=self.stderr_file,
                env=python_env(env, watch_stdin=watch_stdin),
                pass_fds=(3, 4),
                # The only way to place the sockets on fds 3 and 4; the tests start workers from one thread.
                preexec_fn=place_fds,
            )
        finally:
            call_child.close()
            control_child.close()
        self.calls = FrameReader(self.call_sock, max_frame)
        self.call_writer = FrameWriter(self.call_sock, max_frame)
        self.controls = FrameReader(self.control_sock, max_frame)
        self.control_writer = FrameWriter(self.control_sock, max_frame)
        self._next_call = 0
        self._next_control = 0
        self._call_frames: list[Frame] = []
        self._control_frames: list[Frame] = []
        self.ready: dict[str, Any] | None = None

    # -- startup -------------------------------------------------------------- #

    def read_ready(self) -> dict[str, Any]:
        frame = self._read(self.controls)
        if frame.header["t"] != "ready":
            raise AssertionError(f"expected a ready frame, got {frame.header}")
        self.ready = frame.header
        return frame.header

    def _read(self, reader: FrameReader) -> Frame:
        try:
            frame = reader.read()
        except TimeoutError:
            raise AssertionError(f"no frame within {TIMEOUT}s; stderr:\n{self.stderr()}") from None
        if frame is None:
            raise AssertionError(f"the worker closed the channel; stderr:\n{self.stderr()}")
        return frame

    # -- calls ---------------------------------------------------------------- #

    def send_call(
        self,
        tool: str,
        args: Any = None,
        *,
        session: str = "",
        stream: bool = False,
        window: int | None = None,
        attachments: dict[str, bytes] | None = None,
        **extra: Any,
    ) -> int:
        self._next_call += 1
        header: dict[str, Any] = {"t": "call", "i": self._next_call, "tool": tool, "a": {} if args is None else args}
        if session:
            header["s"] = session
        if stream:
            header["stream"] = True
        if window is not None:
            header["w"] = window
        if attachments:
            header["att"] = attachments
        header.update(extra)
        self.call_writer.send(header)
        return self._next_call

    def frame(self, call_id: int) -> Frame:
        """The next frame about call ``call_id`` (frames about other calls are kept for later)."""
        for index, frame in enumerate(self._call_frames):
            if frame.header.get("i") == call_id:
                return self._call_frames.pop(index)
        while True:
            frame = self._read(self.calls)
            if frame.header.get("i") == call_id:
                return frame
            self._call_frames.append(frame)

    def pending_call_frames(self) -> list[Frame]:
        """Frames already read for calls nobody asked about yet."""
        return list(self._call_frames)

    def call(self, tool: str, args: Any = None, **kw: Any) -> Frame:
        return self.frame(self.send_call(tool, args, **kw))

    def result(self, tool: str, args: Any = None, **kw: Any) -> Any:
        frame = self.call(tool, args, **kw)
        if frame.header["t"] != "result":
            raise AssertionError(f"{tool} did not return a result: {frame.header}")
        return frame.value("v", "result")

    def error(self, tool: str, args: Any = None, **kw: Any) -> dict[str, Any]:
        frame = self.call(tool, args, **kw)
        if frame.header["t"] != "error":
            raise AssertionError(f"{tool} did not fail: {frame.header}")
        error: dict[str, Any] = frame.header["e"]
        return error

    def stream(self, tool: str, args: Any = None, *, window: int = 1_000_000, **kw: Any) -> list[Frame]:
        """Every frame of a stream with enough credit for all of it, up to the terminal one."""
        call_id = self.send_call(tool, args, stream=True, window=window, **kw)
        frames = []
        while True:
            frame = self.frame(call_id)
            frames.append(frame)
            if frame.header["t"] in TERMINAL:
                return frames

    # -- control -------------------------------------------------------------- #

    def send_control(self, kind: str, **fields: Any) -> int:
        self._next_control += 1
        self.control_writer.send({"t": kind, "i": self._next_control, **fields})
        return self._next_control

    def control(self, kind: str, **fields: Any) -> Any:
        """Send a control request and return the value of its reply (other control frames are kept)."""
        control_id = self.send_control(kind, **fields)
        while True:
            frame = self._read(self.controls)
            if frame.header["t"] == "reply" and frame.header.get("i") == control_id:
                return frame.value("v", "reply")
            self._control_frames.append(frame)

    def host_request(self) -> Frame:
        """The next host_call / host_list / host_cancel the worker sent."""
        for index, frame in enumerate(self._control_frames):
            if frame.header["t"].startswith("host_"):
                return self._control_frames.pop(index)
        while True:
            frame = self._read(self.controls)
            if frame.header["t"].startswith("host_"):
                return frame
            self._control_frames.append(frame)

    def take_control_frames(self, kind: str) -> list[Frame]:
        """The control frames of type ``kind`` read so far and not yet handed out, removed from the backlog."""
        taken = [f for f in self._control_frames if f.header["t"] == kind]
        self._control_frames = [f for f in self._control_frames if f.header["t"] != kind]
        return taken

    def cancel(self, call_id: int) -> None:
        self.control_writer.send({"t": "cancel", "i": call_id})

    def credit(self, call_id: int, n: int) -> None:
        self.control_writer.send({"t": "credit", "i": call_id, "n": n})

    def health(self) -> dict[str, Any]:
        health: dict[str, Any] = self.control("health")
        return health

    def nothing_readable(self) -> bool:
        """True when no frame waits on the call socket, nor among the frames kept aside."""
        if self._call_frames:
            return False
        readable, _, _ = select.select([self.call_sock], [], [], 0)
        return not readable

    # -- exit ----------------------------------------------------------------- #

    def _close_channels(self) -> None:
        for sock in (self.call_sock, self.control_sock):
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> LocalWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GrpcWorker(_Process):
    """``python -m snakepit_bridge --transport grpc`` given its bootstrap line on stdin."""

    def __init__(
        self,
        *args: str,
        bootstrap: dict[str, Any] | None,
        adapter: str | None = ODD_ADAPTER,
        watch_stdin: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.proc = subprocess.Popen(
            self.command(*args, adapter=adapter, transport="grpc"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            env=python_env(env, watch_stdin=watch_stdin),
        )
        self._stdout_rest = b""
        assert self.proc.stdin is not None
        if bootstrap is not None:
            # Kept open afterwards: EOF on stdin means the host is gone.
            self.proc.stdin.write(json.dumps(bootstrap).encode() + b"\n")
            self.proc.stdin.flush()
        self.ready: dict[str, Any] | None = None

    def read_ready(self, timeout: float = 15.0) -> dict[str, Any]:
        line = self._read_stdout_line(timeout)
        prefix = "SNAKEPIT_READY "
        if not line.startswith(prefix):
            raise AssertionError(f"unexpected first stdout line {line!r}; stderr:\n{self.stderr()}")
        self.ready = json.loads(line[len(prefix) :])
        return self.ready

    def _read_stdout_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no readiness line within {timeout}s; stderr:\n{self.stderr()}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
        line, _, self._stdout_rest = buf.partition(b"\n")
        return line.decode()

    def remaining_stdout(self) -> bytes:
        """Whatever the worker wrote to stdout after the readiness line (call after exit)."""
        assert self.proc.stdout is not None
        return self._stdout_rest + self.proc.stdout.read()

    def __enter__(self) -> GrpcWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
