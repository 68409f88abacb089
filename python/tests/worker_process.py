"""Start a worker process for tests, talk to it, and make sure it is gone after."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import grpc

from snakepit_bridge.generated import snakepit_bridge_pb2 as pb
from snakepit_bridge.generated import snakepit_bridge_pb2_grpc as pb_grpc

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RPC_TIMEOUT = 10.0


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll condition until it holds; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """True while pid is a live (non-zombie) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerProcess:
    """A `python -m snakepit_bridge.server` subprocess."""

    def __init__(
        self,
        *args: str,
        adapter: str | None = None,
        watch_stdin: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.stderr_file = tempfile.TemporaryFile()
        self.extra_pids: list[int] = []
        cmd = [sys.executable, "-m", "snakepit_bridge.server", "--worker-id", "test-worker",
               "--snakepit-run-id", "test-run"]
        if adapter:
            cmd += ["--adapter", adapter]
        cmd += list(args)
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = PYTHON_DIR
        full_env.pop("SNAKEPIT_NO_STDIN_WATCH", None)
        if not watch_stdin:
            full_env["SNAKEPIT_NO_STDIN_WATCH"] = "1"
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            env=full_env,
        )
        self.ready: dict[str, Any] | None = None
        self.channel: grpc.Channel | None = None
        self.stub: pb_grpc.BridgeServiceStub | None = None

    # -- startup -------------------------------------------------------------- #

    def read_ready(self, timeout: float = 15.0) -> dict[str, Any]:
        """Read the readiness line; connect a stub to the announced port."""
        line = self._read_stdout_line(timeout)
        prefix = "SNAKEPIT_READY "
        if not line.startswith(prefix):
            raise AssertionError(f"unexpected first stdout line {line!r}; stderr:\n{self.stderr()}")
        self.ready = json.loads(line[len(prefix):])
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.ready['port']}")
        self.stub = pb_grpc.BridgeServiceStub(self.channel)
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
        line, _, rest = buf.partition(b"\n")
        self._stdout_rest = rest
        return line.decode()

    # -- calls ---------------------------------------------------------------- #

    def call(self, tool: str, args: Any = None, *, raw: bytes | None = None,
             session_id: str = "", attachments: dict[str, bytes] | None = None) -> pb.ExecuteToolResponse:
        assert self.stub is not None
        args_json = raw if raw is not None else (json.dumps(args).encode() if args is not None else b"")
        return self.stub.ExecuteTool(
            pb.ExecuteToolRequest(tool=tool, args_json=args_json, session_id=session_id,
                                  attachments=attachments or {}),
            timeout=RPC_TIMEOUT,
        )

    def result(self, tool: str, args: Any = None, **kw: Any) -> Any:
        """Call a tool and decode its JSON result, failing on a ToolError."""
        response = self.call(tool, args, **kw)
        if response.WhichOneof("outcome") != "result_json":
            raise AssertionError(f"{tool} failed: {response.error}")
        return json.loads(response.result_json)

    def stream(self, tool: str, args: Any = None, **kw: Any) -> list[pb.ToolChunk]:
        assert self.stub is not None
        request = pb.ExecuteToolRequest(tool=tool, args_json=json.dumps(args or {}).encode(), **kw)
        return list(self.stub.ExecuteStreamingTool(request, timeout=RPC_TIMEOUT))

    def spawn_grandchild(self) -> int:
        pid = int(self.result("spawn_child", {"seconds": 120})["pid"])
        self.extra_pids.append(pid)
        return pid

    # -- exit ----------------------------------------------------------------- #

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode(errors="replace")

    def remaining_stdout(self) -> bytes:
        """Whatever the worker wrote to stdout after the readiness line (call after exit)."""
        assert self.proc.stdout is not None
        return getattr(self, "_stdout_rest", b"") + self.proc.stdout.read()

    def close(self) -> None:
        """Kill the worker, its process group and any grandchild we know of."""
        if self.channel is not None:
            self.channel.close()
        if self.proc.poll() is None:
            try:
                # The worker leads its own group once it has started.
                if os.getpgid(self.proc.pid) == self.proc.pid:
                    os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.kill()
        self.proc.wait(timeout=10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        for pid in self.extra_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.stderr_file.close()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
