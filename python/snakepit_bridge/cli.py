"""The worker's entry point: ``python -m snakepit_bridge --adapter module[:Class] ...``.

Contract with the host:

* ``--transport local`` (the default): the host passes two socket pairs as fds 3 and 4
  (see channel.py); the worker announces itself with a ``ready`` frame.
* ``--transport grpc``: the host writes one bootstrap line of JSON to stdin (the
  per-worker token, and where the host's tool bridge is); the worker then serves gRPC
  and writes one line, ``SNAKEPIT_READY {json}``, to its original stdout.
* Nothing a tool writes to fd 1 or fd 2 reaches either channel: fd 1 is pointed at
  stderr, which the host reads as the worker's log.
* Exit codes: 0 after Stop or SIGTERM, 1 the host is gone, 2 bad command line, 3 the
  adapter could not be imported, 4 the adapter's constructor or ``on_start`` raised,
  5 the gRPC server could not bind, 6 the host broke the protocol.
* The worker leads its own process group and is the subreaper of what its tools start;
  however it exits, it takes all of that along. It dies with its host (PDEATHSIG, and
  EOF on stdin or on its channel).
"""

from __future__ import annotations

import argparse
import atexit
import inspect
import json
import logging
import os
import signal
import sys
import threading
import traceback
from typing import IO, Any, NoReturn

from . import hygiene, telemetry
from .host_bridge import HostBridge

DEFAULT_ADAPTER = "snakepit_bridge.showcase:ShowcaseAdapter"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
READY_PREFIX = "SNAKEPIT_READY"

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_IMPORT_FAILURE = 3
EXIT_STARTUP_FAILURE = 4
EXIT_BIND_FAILURE = 5

# Seconds in-flight calls may take to finish after SIGTERM.
SIGTERM_GRACE_S = 2.0

log = logging.getLogger("snakepit_bridge")


def _loopback_host(value: str) -> str:
    """argparse type: accept only loopback addresses."""
    # The usual values need no parsing: importing ipaddress costs worker startup.
    if value in ("localhost", "127.0.0.1", "::1"):
        return value
    import ipaddress

    try:
        if ipaddress.ip_address(value).is_loopback:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{value!r} is not a loopback address")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter with a fixed width: finding the terminal's imports shutil (2.5 ms)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("width", 100)
        super().__init__(*args, **kwargs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m snakepit_bridge",
        description="Snakepit Python worker: serves an adapter's tools to its host.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--adapter", default=DEFAULT_ADAPTER, help="module[:Class] (default: %(default)s)")
    parser.add_argument("--transport", choices=("local", "grpc"), default="local")
    parser.add_argument("--worker-id", default="", help="the host's id for this worker")
    parser.add_argument(
        "--snakepit-run-id",
        default="",
        help="the host run this worker belongs to (lets the host find orphans by command line)",
    )
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    parser.add_argument(
        "--validate-arguments", action="store_true", help="check arguments against the tools' annotations"
    )
    parser.add_argument("--concurrency", type=int, default=1, help="local: calls the host may run at once")
    parser.add_argument("--host-tools", action="store_true", help="local: the host offers tools (ctx.call_host)")
    parser.add_argument("--port", type=int, default=0, help="grpc: port to listen on; 0 picks a free one")
    parser.add_argument("--host", type=_loopback_host, default="127.0.0.1", help="grpc: loopback address to bind")
    parser.add_argument("--unix-socket", default="", help="grpc: serve on this unix socket instead of a port")
    parser.add_argument("--log-level", default="INFO", type=str.upper)
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is out of range")
    if args.max_message_bytes <= 0:
        parser.error("--max-message-bytes must be positive")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if not isinstance(logging.getLevelName(args.log_level), int):
        parser.error(f"unknown --log-level {args.log_level!r}")
    return args


def _configure_logging(level: str, worker_id: str) -> None:
    label = (worker_id or "-").replace("%", "%%")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [worker {label}] %(name)s: %(message)s"))
    # Records made inside a call go to the host as structured records (telemetry.py), not stderr.
    handler.addFilter(telemetry.outside_call)
    root = logging.getLogger()
    root.handlers[:] = [handler, telemetry.CallLogHandler()]
    root.setLevel(level)


def _start_adapter(adapter_class: type[Any], loop: Any) -> Any:
    """Constructs the adapter and runs ``on_start`` (an async one on the tools' loop)."""
    adapter = adapter_class()
    started = adapter.on_start()
    if inspect.isawaitable(started):
        loop.run(started)
    return adapter


def _stop_adapter(adapter: Any, loop: Any) -> None:
    try:
        stopped = adapter.on_stop()
        if inspect.isawaitable(stopped):
            loop.run(stopped, timeout=SIGTERM_GRACE_S)
    except BaseException:
        log.exception("adapter on_stop raised")


def _serve_local(args: argparse.Namespace, adapter_class: type[Any]) -> NoReturn:
    from .channel import CALL_FD, CONTROL_FD, EXIT_PROTOCOL_ERROR, LocalTransport, NoChannel, open_socket
    from .dispatch import Dispatcher, LoopThread, install_interrupt
    from .frames import ProtocolError

    try:
        transport = LocalTransport(
            open_socket(CALL_FD),
            open_socket(CONTROL_FD),
            max_frame=args.max_message_bytes,
            concurrency=args.concurrency,
        )
    except NoChannel as exc:
        log.error("%s", exc)
        hygiene.exit_now(EXIT_USAGE)
    loop = LoopThread()
    state: dict[str, Any] = {"adapter": None, "stopping": False}
    stop_lock = threading.Lock()

    def stop(grace: float) -> None:
        with stop_lock:
            if state["stopping"]:
                return
            state["stopping"] = True
        dispatcher = state.get("dispatcher")
        if dispatcher is not None and not dispatcher.wait_idle(grace):
            log.warning("calls still running after %.1fs; stopping anyway", grace)
        if state["adapter"] is not None:
            _stop_adapter(state["adapter"], loop)
        log.info("stopped")
        hygiene.exit_now(EXIT_OK)

    transport.start_control(stop)
    bridge = transport.host_bridge(args.worker_id, available=args.host_tools)
    try:
        adapter = _start_adapter(adapter_class, loop)
    except BaseException:
        log.error("adapter %s failed to start:\n%s", adapter_class.adapter_name(), traceback.format_exc())
        hygiene.exit_now(EXIT_STARTUP_FAILURE)
    state["adapter"] = adapter
    dispatcher = Dispatcher(
        adapter,
        worker_id=args.worker_id,
        run_id=args.snakepit_run_id,
        host_bridge=bridge,
        loop=loop,
        validate_arguments=args.validate_arguments,
    )
    state["dispatcher"] = dispatcher

    def on_sigterm() -> None:
        if state["stopping"]:
            log.warning("second SIGTERM: exiting now")
            hygiene.exit_now(EXIT_OK)
        log.info("SIGTERM: stopping")
        # On a thread of its own: a second SIGTERM must still be heard while calls drain.
        threading.Thread(target=stop, args=(SIGTERM_GRACE_S,), name="snakepit-stop", daemon=True).start()

    hygiene.on_sigterm(on_sigterm)
    install_interrupt()
    transport.announce(dispatcher, sys.version.split()[0])
    log.info("serving %s over the local channel (%d tools)", dispatcher.adapter_name, len(dispatcher.tools))
    try:
        transport.serve_calls()
    except ProtocolError as exc:
        log.error("protocol error on the call channel: %s", exc)
        hygiene.exit_now(EXIT_PROTOCOL_ERROR)
    except OSError as exc:
        hygiene.die_with_host(f"the call channel failed ({exc})")
    hygiene.die_with_host("the call channel closed")


def _read_bootstrap() -> dict[str, Any]:
    line = hygiene.read_line_from_stdin()
    if not line.strip():
        return {}
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("the bootstrap line is not a JSON object")
    return data


def _serve_grpc(
    args: argparse.Namespace, adapter_class: type[Any], ready_out: IO[str], bootstrap: dict[str, Any]
) -> NoReturn:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from . import grpc_server
    from .dispatch import Dispatcher, LoopThread

    token = str(bootstrap.get("token", ""))
    if not token:
        log.error("no worker token in the bootstrap line: refusing to serve an unauthenticated gRPC port")
        hygiene.exit_now(EXIT_USAGE)
    bridge: HostBridge = HostBridge()
    host_tools = bootstrap.get("host_bridge")
    if isinstance(host_tools, dict) and host_tools.get("address"):
        from .grpc_host_bridge import GrpcHostBridge

        bridge = GrpcHostBridge(
            str(host_tools["address"]),
            str(host_tools.get("secret", "")) or None,
            worker_id=args.worker_id,
            max_message_bytes=args.max_message_bytes,
        )

    async def main() -> int:
        aloop = asyncio.get_running_loop()
        stop_grace: asyncio.Future[float] = aloop.create_future()

        def request_stop(grace: float) -> None:
            if not stop_grace.done():
                stop_grace.set_result(grace)

        def on_sigterm() -> None:
            if stop_grace.done():
                log.warning("second SIGTERM: exiting now")
                hygiene.exit_now(EXIT_OK)
            log.info("SIGTERM: stopping")
            request_stop(SIGTERM_GRACE_S)

        loop = LoopThread(aloop)
        try:
            adapter = adapter_class()
            started = adapter.on_start()
            if inspect.isawaitable(started):
                await started
        except BaseException:
            log.error("adapter %s failed to start:\n%s", adapter_class.adapter_name(), traceback.format_exc())
            return EXIT_STARTUP_FAILURE
        dispatcher = Dispatcher(
            adapter,
            worker_id=args.worker_id,
            run_id=args.snakepit_run_id,
            host_bridge=bridge,
            loop=loop,
            validate_arguments=args.validate_arguments,
        )
        executor = ThreadPoolExecutor(thread_name_prefix="snakepit-tool")

        def announce(where: dict[str, Any]) -> None:
            aloop.add_signal_handler(signal.SIGTERM, on_sigterm)
            ready = {**where, "pid": os.getpid(), "worker_id": args.worker_id, "adapter": dispatcher.adapter_name}
            ready_out.write(f"{READY_PREFIX} {json.dumps(ready)}\n")
            ready_out.flush()

        code = await grpc_server.serve(
            dispatcher,
            token=token,
            host=args.host,
            port=args.port,
            unix_socket=args.unix_socket,
            max_message_bytes=args.max_message_bytes,
            executor=executor,
            announce=announce,
            stop_grace=stop_grace,
            request_stop=request_stop,
        )
        try:
            stopped = adapter.on_stop()
            if inspect.isawaitable(stopped):
                await stopped
        except BaseException:
            log.exception("adapter on_stop raised")
        await bridge.aclose()
        executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")
        return code

    hygiene.exit_now(asyncio.run(main()))


def main(argv: list[str] | None = None) -> NoReturn:
    args = parse_args(argv)
    ready_out = hygiene.reserve_stdout()
    _configure_logging(args.log_level, args.worker_id)
    hygiene.become_group_leader()
    hygiene.die_with_parent()
    hygiene.adopt_orphans()
    # Covers exits that bypass exit_now (e.g. an unexpected exception in main).
    atexit.register(hygiene.kill_descendants)
    # Until serving starts, SIGTERM (e.g. during a slow adapter import) exits at once,
    # still taking every descendant along.
    hygiene.route_sigterm(lambda: hygiene.exit_now(EXIT_OK))
    bootstrap: dict[str, Any] = {}
    if args.transport == "grpc":
        try:
            bootstrap = _read_bootstrap()
        except ValueError as exc:
            log.error("bad bootstrap line on stdin: %s", exc)
            hygiene.exit_now(EXIT_USAGE)
    hygiene.watch_stdin()
    if not args.snakepit_run_id:
        log.warning("no --snakepit-run-id given; the host cannot identify this worker as its own")

    from .loading import load_adapter_class

    try:
        adapter_class = load_adapter_class(args.adapter)
    except BaseException:
        log.error("could not import adapter %s:\n%s", args.adapter, traceback.format_exc())
        hygiene.exit_now(EXIT_IMPORT_FAILURE)

    if args.transport == "grpc":
        _serve_grpc(args, adapter_class, ready_out, bootstrap)
    _serve_local(args, adapter_class)
