"""Startup, stopping and the death of the host on the local transport; a host that breaks the protocol.

Each test has a worker of its own, and checks how it ends and that nothing it started is left.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import unittest
from typing import Any

from snakepit_bridge.frames import PREFIX, U32

from .worker_process import (
    ODD_ADAPTER,
    TIMEOUT,
    LocalWorker,
    parent_of,
    pid_alive,
    python_env,
    wait_until,
)

EXIT_OK = 0
EXIT_HOST_GONE = 1
EXIT_USAGE = 2
EXIT_IMPORT_FAILURE = 3
EXIT_STARTUP_FAILURE = 4
EXIT_PROTOCOL_ERROR = 6


class LifecycleTest(unittest.TestCase):
    """Each test has a worker of its own, and checks how it ends."""

    def start(self, *args: str, **kw: Any) -> LocalWorker:
        worker = LocalWorker(*args, **kw)
        self.addCleanup(worker.close)
        return worker

    def started(self, *args: str, **kw: Any) -> LocalWorker:
        worker = self.start(*args, **kw)
        worker.read_ready()
        return worker

    def escapees(self, worker: LocalWorker) -> list[int]:
        """A grandchild in the worker's group, one in a new session, and a double-forked daemon."""
        child = worker.result("spawn_child", {"seconds": 120})["pid"]
        escaped = worker.result("spawn_escapees")
        pids = [child, escaped["session_child"], escaped["daemon"]]
        worker.extra_pids.extend(pids)
        # The daemon's parents are gone: as the subreaper, the worker has adopted it.
        wait_until(lambda: parent_of(escaped["daemon"]) == worker.pid, TIMEOUT, "the worker to adopt the daemon")
        self.assertTrue(all(pid_alive(pid) for pid in pids))
        return pids

    def assert_all_gone(self, pids: list[int]) -> None:
        wait_until(lambda: not any(pid_alive(pid) for pid in pids), TIMEOUT, f"processes {pids} to die")

    def test_stop_lets_a_running_call_finish_within_its_grace(self) -> None:
        worker = self.started()
        call_id = worker.send_call("sleep_then", {"ms": 300, "value": "finished"})
        wait_until(lambda: bool(worker.health()["running"]), TIMEOUT, "the call to start")
        self.assertEqual(worker.control("stop", grace_ms=10_000), {})
        self.assertEqual(worker.frame(call_id).value("v", "r"), "finished")
        self.assertEqual(worker.wait(), EXIT_OK)
        self.assertIsNone(worker.calls.read(), "the channel closes with the worker")

    def test_stop_does_not_wait_past_its_grace(self) -> None:
        worker = self.started()
        worker.send_call("sleep", {"ms": 60_000})
        wait_until(lambda: bool(worker.health()["running"]), TIMEOUT, "the call to start")
        worker.control("stop", grace_ms=100)
        self.assertEqual(worker.wait(), EXIT_OK)
        self.assertIn("still running", worker.stderr())

    def test_stop_kills_what_the_tools_started(self) -> None:
        worker = self.started()
        pids = self.escapees(worker)
        worker.control("stop", grace_ms=1000)
        self.assertEqual(worker.wait(), EXIT_OK)
        self.assert_all_gone(pids)

    def test_sigterm(self) -> None:
        worker = self.started()
        pids = self.escapees(worker)
        worker.proc.send_signal(signal.SIGTERM)
        self.assertEqual(worker.wait(), EXIT_OK)
        self.assert_all_gone(pids)
        self.assertIn("SIGTERM", worker.stderr())

    def test_eof_of_the_control_channel_kills_the_worker_and_its_children(self) -> None:
        worker = self.started()
        pids = self.escapees(worker)
        worker.control_sock.shutdown(socket.SHUT_RDWR)
        self.assertEqual(worker.wait(), EXIT_HOST_GONE)
        self.assert_all_gone(pids)
        self.assertIn("the control channel closed", worker.stderr())

    def test_eof_of_the_call_channel_kills_the_worker_and_its_children(self) -> None:
        worker = self.started()
        pids = self.escapees(worker)
        worker.call_sock.shutdown(socket.SHUT_RDWR)
        self.assertEqual(worker.wait(), EXIT_HOST_GONE)
        self.assert_all_gone(pids)

    def test_eof_on_stdin_kills_the_worker_and_its_children(self) -> None:
        worker = self.started()
        pids = self.escapees(worker)
        assert worker.proc.stdin is not None
        worker.proc.stdin.close()
        self.assertEqual(worker.wait(), EXIT_HOST_GONE)
        self.assert_all_gone(pids)
        self.assertIn("stdin reached EOF", worker.stderr())

    def test_host_eof_during_a_call(self) -> None:
        worker = self.started()
        pids = self.escapees(worker)
        worker.send_call("spin")
        wait_until(lambda: bool(worker.health()["running"]), TIMEOUT, "spin to start")
        worker.control_sock.shutdown(socket.SHUT_RDWR)
        worker.call_sock.shutdown(socket.SHUT_RDWR)
        self.assertEqual(worker.wait(), EXIT_HOST_GONE)
        self.assert_all_gone(pids)

    def test_a_crashing_tool_closes_the_channel(self) -> None:
        worker = self.started(watch_stdin=False)
        worker.send_call("crash", {"code": 9})
        self.assertEqual(worker.wait(), 9)
        self.assertIsNone(worker.calls.read())

    def test_result_too_large_is_an_error_and_the_worker_keeps_serving(self) -> None:
        worker = self.started("--max-message-bytes", "65536")
        error = worker.error("give_bytes", {"size": 100_000})
        self.assertEqual((error["kind"], error["type"]), ("unserializable_result", "ResultTooLarge"))
        self.assertIn("65536", error["message"])
        self.assertEqual(worker.result("give_bytes", {"size": 10})["size"], 10)


class ProtocolErrorTest(unittest.TestCase):
    """A host that breaks the protocol gets a worker that exits with code 6, never one that hangs."""

    def assert_protocol_error(self, send: Any, *needles: str, with_child: bool = False) -> None:
        worker = LocalWorker(watch_stdin=False)
        self.addCleanup(worker.close)
        worker.read_ready()
        pids = [worker.result("spawn_child", {"seconds": 120})["pid"]] if with_child else []
        worker.extra_pids.extend(pids)
        send(worker)
        self.assertEqual(worker.wait(5), EXIT_PROTOCOL_ERROR)
        wait_until(lambda: not any(pid_alive(pid) for pid in pids), TIMEOUT, "the worker's child to die")
        for needle in needles:
            self.assertIn(needle, worker.stderr())

    def test_garbage_on_the_call_socket(self) -> None:
        self.assert_protocol_error(
            lambda w: w.call_sock.sendall(b"GET / HTTP/1.1\r\n\r\n"), "protocol error", with_child=True
        )

    def test_a_frame_over_the_limit(self) -> None:
        self.assert_protocol_error(lambda w: w.call_sock.sendall(U32.pack(1 << 30) + b"\x00" * 16), "exceeds the limit")

    def test_a_header_that_is_not_json(self) -> None:
        header = b"{nope"
        raw = PREFIX.pack(PREFIX.size - 4 + len(header), 0, len(header)) + header
        self.assert_protocol_error(lambda w: w.call_sock.sendall(raw), "not JSON")

    def test_a_frame_of_the_wrong_type_on_the_call_socket(self) -> None:
        self.assert_protocol_error(lambda w: w.call_writer.send({"t": "health", "i": 1}), "unexpected 'health'")

    def test_a_call_without_an_integer_id(self) -> None:
        self.assert_protocol_error(lambda w: w.call_writer.send({"t": "call", "i": "x", "tool": "ping"}), "integer 'i'")

    def test_an_unknown_control_frame(self) -> None:
        self.assert_protocol_error(lambda w: w.control_writer.send({"t": "reboot", "i": 1}), "unknown frame type")

    def test_garbage_on_the_control_socket(self) -> None:
        self.assert_protocol_error(lambda w: w.control_sock.sendall(b"\xff" * 64), "control channel")

    def test_a_credit_frame_with_a_bad_count(self) -> None:
        # Must not kill the control thread and leave a worker that no longer answers.
        self.assert_protocol_error(lambda w: w.control_writer.send({"t": "credit", "i": 1, "n": "many"}))

    def test_a_call_frame_with_a_bad_window(self) -> None:
        self.assert_protocol_error(
            lambda w: w.call_writer.send(
                {"t": "call", "i": 1, "tool": "flood", "a": {"count": 1}, "stream": True, "w": "x"}
            )
        )


class StartupTest(unittest.TestCase):
    def assert_fails_before_ready(self, adapter: str, code: int, *needles: str, args: tuple[str, ...] = ()) -> None:
        worker = LocalWorker(*args, adapter=adapter, watch_stdin=False)
        self.addCleanup(worker.close)
        self.assertEqual(worker.wait(), code)
        self.assertIsNone(worker.controls.read(), "no ready frame")
        self.assertEqual(worker.stdout(), b"")
        stderr = worker.stderr()
        for needle in needles:
            self.assertIn(needle, stderr)

    def test_import_failure_exits_3(self) -> None:
        self.assert_fails_before_ready(
            "tests.fixture_broken_import", EXIT_IMPORT_FAILURE, "Traceback", "a_module_that_does_not_exist_snakepit"
        )

    def test_missing_module_exits_3(self) -> None:
        self.assert_fails_before_ready("tests.no_such_module_here", EXIT_IMPORT_FAILURE, "no_such_module_here")

    def test_ambiguous_adapter_exits_3(self) -> None:
        self.assert_fails_before_ready("tests.fixture_two_adapters", EXIT_IMPORT_FAILURE, "FirstAdapter")

    def test_on_start_failure_exits_4(self) -> None:
        self.assert_fails_before_ready("tests.fixture_failing_start", EXIT_STARTUP_FAILURE, "on_start refuses to start")

    def test_bad_command_line_exits_2(self) -> None:
        self.assert_fails_before_ready(
            ODD_ADAPTER, EXIT_USAGE, "--concurrency must be at least 1", args=("--concurrency", "0")
        )

    def test_without_the_channel_fds_the_worker_says_so(self) -> None:
        # Started by hand, without fds 3 and 4: a clear message and the usage exit code, not a traceback.
        proc = subprocess.run(
            [sys.executable, "-m", "snakepit_bridge", "--snakepit-run-id", "test-run"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=python_env(watch_stdin=False),
            timeout=TIMEOUT,
            check=False,
        )
        self.assertEqual(proc.returncode, EXIT_USAGE, proc.stderr.decode())
        self.assertNotIn(b"Traceback", proc.stderr)
        self.assertIn(b"fd 3", proc.stderr)


if __name__ == "__main__":
    unittest.main()
