"""The worker process: serves one adapter's tools over the gRPC BridgeService.

Run as ``python -m snakepit_bridge.server --adapter module[:Class] ...``.

Contract with the host:

* stdout carries exactly one line, ``SNAKEPIT_READY {json}``, written once the
  server listens. Everything else (logs, stray prints) goes to stderr.
* Exit codes: 0 after Stop or SIGTERM, 2 bad command line, 3 the adapter could
  not be imported, 4 the adapter's constructor or ``on_start`` raised, 5 the
  server could not bind its port.
* The worker makes itself a process group leader. When it exits by any path
  it SIGKILLs the rest of its process group (the tools' children); when its
  stdin reaches EOF (the host died) it SIGKILLs its whole group, itself
  included.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import concurrent.futures
import ctypes
import errno
import functools
import importlib
import inspect
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_concurrent
from typing import IO, Any, NoReturn

from grpc import aio

from .adapter import BaseAdapter, ToolContext, ToolInfo, ToolResult
from .generated import snakepit_bridge_pb2 as pb
from .generated import snakepit_bridge_pb2_grpc as pb_grpc
from .host_bridge import HostBridge

PROTOCOL_VERSION = 1
READY_PREFIX = "SNAKEPIT_READY"
DEFAULT_ADAPTER = "snakepit_bridge.showcase:ShowcaseAdapter"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_IMPORT_FAILURE = 3
EXIT_STARTUP_FAILURE = 4
EXIT_BIND_FAILURE = 5

# Seconds in-flight calls may take to finish after SIGTERM.
SIGTERM_GRACE_S = 2.0

log = logging.getLogger("snakepit_bridge")
Kind = pb.ToolError.Kind


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #


def _loopback_host(value: str) -> str:
    """argparse type: accept only loopback addresses, since the bridge has no auth."""
    # The usual values need no parsing: importing ipaddress costs 1.4 ms of
    # worker startup, and argparse runs this on the default "127.0.0.1" too.
    if value in ("localhost", "127.0.0.1", "::1"):
        return value
    import ipaddress

    try:
        if ipaddress.ip_address(value).is_loopback:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{value!r} is not a loopback address")


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    stdout = sys.__stdout__
    if stdout is None:
        return 80
    try:
        return os.get_terminal_size(stdout.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter with the same width, found without ``import shutil``.

    argparse builds a formatter for every add_argument, and the first one imports
    shutil (with bz2 and lzma) for the terminal width: 2.5 ms of worker startup.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("width") is None:
            kwargs["width"] = _terminal_columns() - 2
        super().__init__(*args, **kwargs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m snakepit_bridge.server",
        description="Snakepit Python worker: serves an adapter's tools over gRPC.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--adapter", default=DEFAULT_ADAPTER, help="module[:Class] (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one")
    parser.add_argument("--host", type=_loopback_host, default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--worker-id", default="", help="the host's id for this worker")
    parser.add_argument(
        "--snakepit-run-id",
        default="",
        help="the host run this worker belongs to (lets the host find orphans by command line)",
    )
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    parser.add_argument("--log-level", default="INFO", type=str.upper)
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is out of range")
    if args.max_message_bytes <= 0:
        parser.error("--max-message-bytes must be positive")
    if not isinstance(logging.getLevelName(args.log_level), int):
        parser.error(f"unknown --log-level {args.log_level!r}")
    return args


# --------------------------------------------------------------------------- #
# Process hygiene
# --------------------------------------------------------------------------- #


def _reserve_stdout() -> IO[str]:
    """Keep stdout for the readiness line only; send everything else to stderr.

    File descriptor 1 is pointed at stderr, so even native code and child
    processes that inherit fd 1 cannot write to the host's stdout pipe. The
    returned stream writes to a private (non-inheritable) duplicate of the
    original stdout.
    """
    sys.stdout.flush()
    ready_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(ready_fd, "w", encoding="utf-8", closefd=False)


def _become_group_leader() -> None:
    """Lead our own process group so killpg reaches exactly our descendants."""
    if os.getpgrp() != os.getpid():
        try:
            os.setpgrp()
        except OSError as exc:  # e.g. already a session leader
            log.warning("could not become a process group leader: %s", exc)


def _set_parent_death_signal() -> None:
    """Linux: get SIGTERM when the parent dies (best effort)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        log.debug("prctl unavailable: %s", exc)


def _group_members_except_self() -> list[int]:
    """Pids in our process group other than ours (Linux: from /proc)."""
    me, group = os.getpid(), os.getpgrp()
    members: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == group:
            members.append(int(entry))
    return members


def kill_process_group_except_self() -> None:
    """SIGKILL every other member of our process group (tools' children)."""
    if os.getpgrp() != os.getpid():
        return  # not our group: it may contain the host
    if os.path.isdir("/proc"):
        # Two passes: a child may have forked while we were killing its parent.
        for _ in range(2):
            for pid in _group_members_except_self():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        return
    # Without /proc: signal the whole group while ignoring the signal ourselves.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(os.getpgrp(), signal.SIGTERM)
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _watch_stdin() -> None:
    """Daemon thread body: the host holds our stdin open; EOF means it died."""
    while True:
        try:
            data = os.read(0, 65536)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            if exc.errno == errno.EBADF:
                log.warning("stdin is closed; not watching for the host's exit")
                return
            data = b""
        if not data:
            break
    log.error("stdin reached EOF: the host is gone; killing the process group")
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _start_stdin_watch() -> None:
    if os.environ.get("SNAKEPIT_NO_STDIN_WATCH"):
        log.debug("SNAKEPIT_NO_STDIN_WATCH is set; not watching stdin")
        return
    threading.Thread(target=_watch_stdin, name="snakepit-stdin-watch", daemon=True).start()


def _exit(code: int) -> NoReturn:
    """Leave now, taking the tools' children with us.

    os._exit rather than sys.exit: a tool thread blocked in a long call would
    otherwise keep the interpreter alive while it joins executor threads.
    """
    kill_process_group_except_self()
    logging.shutdown()
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


def _configure_logging(level: str, worker_id: str) -> None:
    label = (worker_id or "-").replace("%", "%%")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s [worker {label}] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# --------------------------------------------------------------------------- #
# Adapter loading
# --------------------------------------------------------------------------- #


def load_adapter_class(spec: str) -> type[BaseAdapter]:
    """Import ``module[:Class]``; without a class, the module's one BaseAdapter subclass."""
    module_name, _, class_name = spec.partition(":")
    module = importlib.import_module(module_name)
    if class_name:
        obj: Any = module
        for part in class_name.split("."):
            obj = getattr(obj, part)
        if not (isinstance(obj, type) and issubclass(obj, BaseAdapter)):
            raise TypeError(f"{spec} is not a BaseAdapter subclass")
        return obj
    candidates = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseAdapter)
        and obj is not BaseAdapter
        and obj.__module__ == module.__name__
    ]
    if len(candidates) != 1:
        names = ", ".join(sorted(c.__qualname__ for c in candidates)) or "none"
        raise LookupError(
            f"module {module_name} must define exactly one BaseAdapter subclass "
            f"(found: {names}); name one with --adapter {module_name}:Class"
        )
    return candidates[0]


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


# --------------------------------------------------------------------------- #
# Tool calls
# --------------------------------------------------------------------------- #


class _CallError(Exception):
    """A ToolError to report instead of a result."""

    def __init__(self, error: pb.ToolError) -> None:
        super().__init__(error.message)
        self.error = error


_HERE = os.path.dirname(os.path.abspath(__file__))
# Frames from these files lead up to the tool and tell its author nothing.
_RUNTIME_FILES = (
    os.path.join(_HERE, "server.py"),
    os.path.join(_HERE, "adapter.py"),
    os.path.dirname(os.path.abspath(concurrent.futures.__file__)),
    os.path.dirname(os.path.abspath(asyncio.__file__)),
)


def _user_traceback(exc: BaseException) -> str:
    """The traceback without the leading frames of this runtime and the thread pool.

    The caller wants to see their tool's frames; when every frame is ours, keep them all.
    """
    tb = exc.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_RUNTIME_FILES):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def _exception_error(kind: int, exc: BaseException, message: str | None = None) -> pb.ToolError:
    return pb.ToolError(
        kind=kind,
        type=type(exc).__name__,
        message=str(exc) if message is None else message,
        traceback=_user_traceback(exc),
    )


def _encode(tool_name: str, value: Any) -> tuple[bytes, dict[str, bytes]]:
    """JSON-encode a tool's result (or chunk); ToolResult carries attachments.

    NaN/Infinity are refused because they are not JSON; bytes are refused
    because they belong in attachments.
    """
    attachments: dict[str, bytes] = {}
    if isinstance(value, ToolResult):
        attachments = dict(value.attachments)
        value = value.value
    try:
        return json.dumps(value, allow_nan=False).encode("utf-8"), attachments
    except (TypeError, ValueError, RecursionError) as exc:
        raise _CallError(
            _exception_error(
                Kind.UNSERIALIZABLE_RESULT,
                exc,
                f"result of tool {tool_name!r} is not JSON-serialisable: {exc}",
            )
        ) from exc


class _NextSentinel:
    pass


_EXHAUSTED = _NextSentinel()


def _next_item(iterator: Iterator[Any]) -> Any:
    # StopIteration cannot cross a Future, so turn it into a sentinel.
    return next(iterator, _EXHAUSTED)


class BridgeServicer(pb_grpc.BridgeServiceServicer):
    """The BridgeService, serving one adapter instance."""

    def __init__(
        self,
        adapter: BaseAdapter,
        *,
        worker_id: str,
        run_id: str,
        executor: ThreadPoolExecutor,
        request_stop: Callable[[float], None],
        host_bridge: HostBridge | None = None,
    ) -> None:
        self._adapter = adapter
        self._adapter_name = type(adapter).adapter_name()
        self._tools = adapter.tools()
        self._worker_id = worker_id
        self._run_id = run_id
        self._executor = executor
        self._request_stop = request_stop
        # One bridge for every call, so its channels are shared.
        self._host_bridge = host_bridge if host_bridge is not None else HostBridge.from_env(worker_id=worker_id)
        self._sessions: dict[str, dict[str, Any]] = {}
        self._active_calls = 0
        self._started = time.monotonic()

    @property
    def tools(self) -> dict[str, ToolInfo]:
        return dict(self._tools)

    # -- facts ------------------------------------------------------------- #

    async def Ping(self, request: pb.PingRequest, context: aio.ServicerContext) -> pb.PingResponse:
        return pb.PingResponse(
            message="pong",
            pid=os.getpid(),
            worker_id=self._worker_id,
            python_version=sys.version.split()[0],
            adapter=self._adapter_name,
        )

    async def Health(self, request: pb.HealthRequest, context: aio.ServicerContext) -> pb.HealthResponse:
        return pb.HealthResponse(
            ok=True,
            pid=os.getpid(),
            rss_bytes=rss_bytes(),
            active_calls=self._active_calls,
            uptime_ms=int((time.monotonic() - self._started) * 1000),
        )

    async def DescribeTools(
        self, request: pb.DescribeToolsRequest, context: aio.ServicerContext
    ) -> pb.DescribeToolsResponse:
        specs = [
            pb.ToolSpec(
                name=info.name,
                description=info.description,
                streaming=info.streaming,
                parameters=[
                    pb.ToolParameter(
                        name=p.name,
                        type=p.type,
                        required=p.required,
                        default_json=p.default_json.encode("utf-8"),
                    )
                    for p in info.parameters
                ],
            )
            for info in sorted(self._tools.values(), key=lambda i: i.name)
        ]
        return pb.DescribeToolsResponse(tools=specs, adapter=self._adapter_name)

    # -- sessions ---------------------------------------------------------- #

    async def InitializeSession(
        self, request: pb.InitializeSessionRequest, context: aio.ServicerContext
    ) -> pb.InitializeSessionResponse:
        self._sessions.setdefault(request.session_id, {})
        return pb.InitializeSessionResponse()

    async def CleanupSession(
        self, request: pb.CleanupSessionRequest, context: aio.ServicerContext
    ) -> pb.CleanupSessionResponse:
        existed = self._sessions.pop(request.session_id, None) is not None
        return pb.CleanupSessionResponse(existed=existed)

    # -- stop -------------------------------------------------------------- #

    async def Stop(self, request: pb.StopRequest, context: aio.ServicerContext) -> pb.StopResponse:
        grace = max(request.grace_ms, 0) / 1000
        log.info("Stop requested (grace %.3fs)", grace)
        # Shut down only once this reply is on its way, so the caller gets it.
        context.add_done_callback(lambda _ctx: self._request_stop(grace))
        return pb.StopResponse()

    # -- tools ------------------------------------------------------------- #

    def _prepare(self, request: pb.ExecuteToolRequest) -> tuple[ToolInfo, dict[str, Any]]:
        """Find the tool and bind the request's arguments to it, or raise _CallError."""
        info = self._tools.get(request.tool)
        if info is None:
            raise _CallError(
                pb.ToolError(
                    kind=Kind.TOOL_NOT_FOUND,
                    message=f"no tool named {request.tool!r}",
                    available_tools=sorted(self._tools),
                )
            )
        try:
            args = json.loads(request.args_json) if request.args_json else {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise _CallError(
                _exception_error(Kind.INVALID_ARGUMENTS, exc, f"args_json is not valid JSON: {exc}")
            ) from exc
        if not isinstance(args, dict):
            raise _CallError(
                pb.ToolError(
                    kind=Kind.INVALID_ARGUMENTS,
                    type="TypeError",
                    message=f"args_json must be a JSON object, not {type(args).__name__}",
                )
            )
        try:
            info.signature.bind(**args)
        except TypeError as exc:
            raise _CallError(
                _exception_error(Kind.INVALID_ARGUMENTS, exc, f"tool {info.name!r}: {exc}")
            ) from exc
        if info.accepts_ctx:
            args["ctx"] = self._context_for(request)
        return info, args

    def _context_for(self, request: pb.ExecuteToolRequest) -> ToolContext:
        if request.session_id:
            session = self._sessions.setdefault(request.session_id, {})
        else:
            session = {}  # no session: state lives only for this call
        return ToolContext(
            session_id=request.session_id,
            worker_id=self._worker_id,
            run_id=self._run_id,
            session=session,
            attachments=dict(request.attachments),
            host_bridge=self._host_bridge,
        )

    async def _call(self, info: ToolInfo, args: dict[str, Any]) -> Any:
        """Run a non-streaming tool: sync ones in the executor, async ones on the loop."""
        try:
            if info.is_async:
                return await info.func(**args)
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._executor, functools.partial(info.func, **args))
            return await _maybe_await(result)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a tool's SystemExit must not stop the worker
            raise _CallError(_exception_error(Kind.PYTHON_EXCEPTION, exc)) from exc

    async def ExecuteTool(
        self, request: pb.ExecuteToolRequest, context: aio.ServicerContext
    ) -> pb.ExecuteToolResponse:
        self._active_calls += 1
        try:
            log.debug("ExecuteTool %s (request %s)", request.tool, request.request_id)
            info, args = self._prepare(request)
            if info.streaming:
                return pb.ExecuteToolResponse(
                    error=pb.ToolError(
                        kind=Kind.INVALID_ARGUMENTS,
                        message=f"tool {info.name} streams; call it with executeStream",
                    )
                )
            result_json, attachments = _encode(info.name, await self._call(info, args))
            return pb.ExecuteToolResponse(result_json=result_json, attachments=attachments)
        except _CallError as err:
            return pb.ExecuteToolResponse(error=err.error)
        finally:
            self._active_calls -= 1

    async def ExecuteStreamingTool(
        self, request: pb.ExecuteToolRequest, context: aio.ServicerContext
    ) -> None:
        # Written as a coroutine using context.write (not an async generator) so
        # that a client cancel raises CancelledError right here, and the finally
        # blocks below close the tool's generator deterministically.
        self._active_calls += 1
        try:
            log.debug("ExecuteStreamingTool %s (request %s)", request.tool, request.request_id)
            try:
                info, args = self._prepare(request)
                if not info.streaming:
                    data_json, attachments = _encode(info.name, await self._call(info, args))
                    await context.write(pb.ToolChunk(data_json=data_json, attachments=attachments))
                    return
                if info.is_async:
                    items = self._iterate_async(info, args)
                else:
                    items = self._iterate_sync(info, args)
                try:
                    async for item in items:
                        data_json, attachments = _encode(info.name, item)
                        await context.write(pb.ToolChunk(data_json=data_json, attachments=attachments))
                finally:
                    # Runs the tool generator's own finally, also on cancel.
                    await items.aclose()
            except _CallError as err:
                await context.write(pb.ToolChunk(error=err.error))
        finally:
            self._active_calls -= 1

    async def _iterate_async(self, info: ToolInfo, args: dict[str, Any]) -> AsyncGenerator[Any, None]:
        agen = info.func(**args)
        try:
            while True:
                try:
                    item = await agen.__anext__()
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    raise _CallError(_exception_error(Kind.PYTHON_EXCEPTION, exc)) from exc
                yield item
        finally:
            await agen.aclose()

    async def _iterate_sync(self, info: ToolInfo, args: dict[str, Any]) -> AsyncGenerator[Any, None]:
        """Iterate a sync generator one ``next`` at a time in the executor."""
        gen = info.func(**args)  # creating a generator runs none of its code
        pending: ConcurrentFuture[Any] | None = None
        try:
            while True:
                pending = self._executor.submit(_next_item, gen)
                try:
                    item = await asyncio.wrap_future(pending)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    raise _CallError(_exception_error(Kind.PYTHON_EXCEPTION, exc)) from exc
                if item is _EXHAUSTED:
                    return
                yield item
        finally:
            await self._close_sync_generator(gen, pending)

    async def _close_sync_generator(
        self, gen: Iterator[Any], pending: ConcurrentFuture[Any] | None
    ) -> None:
        """Close ``gen`` in the executor, once any ``next`` still running there is done.

        Closing a generator that another thread is executing raises
        ValueError, so the close waits for the in-flight step first.
        """

        def close() -> None:
            if pending is not None:
                wait_concurrent([pending])
            gen.close()  # type: ignore[attr-defined]

        closing = asyncio.wrap_future(self._executor.submit(close))
        try:
            # Shielded: a second cancel must not abandon the close half-way.
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("closing the generator of tool failed")


def rss_bytes() -> int:
    """Resident set size of this process in bytes (0 when unknown)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is the peak, in KiB on Linux and bytes on macOS.
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):
        return 0


# --------------------------------------------------------------------------- #
# Serving
# --------------------------------------------------------------------------- #


async def serve(args: argparse.Namespace, adapter_class: type[BaseAdapter], ready_out: IO[str]) -> int:
    """Start the adapter and the server, report readiness, serve until asked to stop."""
    loop = asyncio.get_running_loop()
    stop_grace: asyncio.Future[float] = loop.create_future()

    def request_stop(grace: float) -> None:
        if not stop_grace.done():
            stop_grace.set_result(grace)

    def on_sigterm() -> None:
        if stop_grace.done():
            log.warning("second SIGTERM: exiting now")
            _exit(EXIT_OK)
        log.info("SIGTERM: stopping")
        request_stop(SIGTERM_GRACE_S)

    executor = ThreadPoolExecutor(thread_name_prefix="snakepit-tool")
    host_bridge = HostBridge.from_env(worker_id=args.worker_id, max_message_bytes=args.max_message_bytes)

    adapter_name = adapter_class.adapter_name()
    try:
        adapter = adapter_class()
        await _maybe_await(adapter.on_start())
        servicer = BridgeServicer(
            adapter,
            worker_id=args.worker_id,
            run_id=args.snakepit_run_id,
            executor=executor,
            request_stop=request_stop,
            host_bridge=host_bridge,
        )
    except BaseException:
        log.error("adapter %s failed to start:\n%s", adapter_name, traceback.format_exc())
        return EXIT_STARTUP_FAILURE

    server = aio.server(
        options=[
            ("grpc.max_send_message_length", args.max_message_bytes),
            ("grpc.max_receive_message_length", args.max_message_bytes),
            # Never share a port with another process.
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_BridgeServiceServicer_to_server(servicer, server)
    host = f"[{args.host}]" if ":" in args.host else args.host
    try:
        port = server.add_insecure_port(f"{host}:{args.port}")
    except RuntimeError as exc:
        log.error("could not bind %s:%s: %s", args.host, args.port, exc)
        port = 0
    if not port:
        return EXIT_BIND_FAILURE
    await server.start()
    # Only now: until the server runs, main()'s handler exits at once, which also works
    # while a synchronous on_start blocks the loop.
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)

    ready = {
        "port": port,
        "pid": os.getpid(),
        "worker_id": args.worker_id,
        "adapter": adapter_name,
        "protocol": PROTOCOL_VERSION,
    }
    ready_out.write(f"{READY_PREFIX} {json.dumps(ready)}\n")
    ready_out.flush()
    log.info("serving %s on %s:%d (%d tools)", adapter_name, args.host, port, len(servicer.tools))
    if host_bridge.configured:
        log.info("host tools via %s", host_bridge.address)

    grace = await stop_grace
    await server.stop(grace)
    try:
        await _maybe_await(adapter.on_stop())
    except BaseException:
        log.exception("adapter on_stop raised")
    await host_bridge.aclose()
    executor.shutdown(wait=False, cancel_futures=True)
    log.info("stopped")
    return EXIT_OK


def main(argv: list[str] | None = None) -> NoReturn:
    args = parse_args(argv)
    ready_out = _reserve_stdout()
    _configure_logging(args.log_level, args.worker_id)
    _become_group_leader()
    _set_parent_death_signal()
    # Covers exits that bypass _exit (e.g. an unexpected exception in main).
    atexit.register(kill_process_group_except_self)
    _start_stdin_watch()
    # Until serve() installs its graceful handler, SIGTERM (e.g. during a slow
    # adapter import) exits at once, still taking the tools' children along.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: _exit(EXIT_OK))
    if not args.snakepit_run_id:
        log.warning("no --snakepit-run-id given; the host cannot identify this worker as its own")

    try:
        adapter_class = load_adapter_class(args.adapter)
    except BaseException:
        log.error("could not import adapter %s:\n%s", args.adapter, traceback.format_exc())
        _exit(EXIT_IMPORT_FAILURE)

    _exit(asyncio.run(serve(args, adapter_class, ready_out)))


if __name__ == "__main__":
    main()
