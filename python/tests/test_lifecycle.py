"""Startup failures, stopping, and the process cleanup the host relies on."""

from __future__ import annotations

import signal
import unittest

from snakepit_bridge.generated import snakepit_bridge_pb2 as pb

from .worker_process import RPC_TIMEOUT, WorkerProcess, pid_alive, wait_until

EXIT_IMPORT_FAILURE = 3
EXIT_STARTUP_FAILURE = 4


class StartupFailureTest(unittest.TestCase):
    def assert_fails_before_ready(self, adapter: str, code: int, *needles: str) -> None:
        with WorkerProcess(adapter=adapter, watch_stdin=False) as worker:
            self.assertEqual(worker.wait(), code)
            self.assertEqual(worker.remaining_stdout(), b"", "no readiness line (nor anything) on stdout")
            stderr = worker.stderr()
            self.assertIn("Traceback (most recent call last)", stderr)
            for needle in needles:
                self.assertIn(needle, stderr)

    def test_import_failure_exits_3(self) -> None:
        self.assert_fails_before_ready(
            "tests.fixture_broken_import", EXIT_IMPORT_FAILURE, "a_module_that_does_not_exist_snakepit"
        )

    def test_missing_module_exits_3(self) -> None:
        self.assert_fails_before_ready("tests.no_such_module_here", EXIT_IMPORT_FAILURE, "no_such_module_here")

    def test_ambiguous_adapter_exits_3(self) -> None:
        self.assert_fails_before_ready("tests.fixture_two_adapters", EXIT_IMPORT_FAILURE, "FirstAdapter")

    def test_on_start_failure_exits_4(self) -> None:
        self.assert_fails_before_ready(
            "tests.fixture_failing_start", EXIT_STARTUP_FAILURE, "on_start refuses to start"
        )

    def test_non_loopback_host_is_refused(self) -> None:
        with WorkerProcess("--host", "0.0.0.0", watch_stdin=False) as worker:
            self.assertEqual(worker.wait(), 2)
            self.assertIn("not a loopback address", worker.stderr())
            self.assertEqual(worker.remaining_stdout(), b"")


class StopTest(unittest.TestCase):
    def test_stop_rpc_exits_0_and_kills_grandchildren(self) -> None:
        with WorkerProcess() as worker:
            worker.read_ready()
            grandchild = worker.spawn_grandchild()
            self.assertTrue(pid_alive(grandchild))
            assert worker.stub is not None
            worker.stub.Stop(pb.StopRequest(grace_ms=1000), timeout=RPC_TIMEOUT)
            self.assertEqual(worker.wait(), 0)
            wait_until(lambda: not pid_alive(grandchild), 5, "the grandchild to die")
            self.assertEqual(worker.remaining_stdout(), b"", "stdout has exactly one line")

    def test_sigterm_exits_0_and_kills_grandchildren(self) -> None:
        with WorkerProcess() as worker:
            worker.read_ready()
            grandchild = worker.spawn_grandchild()
            worker.proc.send_signal(signal.SIGTERM)
            self.assertEqual(worker.wait(), 0)
            wait_until(lambda: not pid_alive(grandchild), 5, "the grandchild to die")
            self.assertEqual(worker.remaining_stdout(), b"")
            self.assertIn("SIGTERM", worker.stderr())

    def test_stdin_eof_kills_worker_and_grandchildren(self) -> None:
        with WorkerProcess(watch_stdin=True) as worker:
            worker.read_ready()
            grandchild = worker.spawn_grandchild()
            assert worker.proc.stdin is not None
            worker.proc.stdin.close()  # what the host's death looks like
            self.assertEqual(worker.wait(), -signal.SIGKILL)
            wait_until(lambda: not pid_alive(grandchild), 5, "the grandchild to die")
            self.assertIn("stdin reached EOF", worker.stderr())

    def test_crash_tool_exits_with_its_code(self) -> None:
        with WorkerProcess(watch_stdin=False) as worker:
            worker.read_ready()
            assert worker.stub is not None
            request = pb.ExecuteToolRequest(tool="crash", args_json=b'{"code": 9}')
            try:
                worker.stub.ExecuteTool(request, timeout=RPC_TIMEOUT)
            except Exception:  # the connection drops as the worker dies
                pass
            self.assertEqual(worker.wait(), 9)

    def test_stop_during_a_long_call_does_not_hang(self) -> None:
        with WorkerProcess(watch_stdin=False) as worker:
            worker.read_ready()
            assert worker.stub is not None
            pending = worker.stub.ExecuteTool.future(
                pb.ExecuteToolRequest(tool="sleep", args_json=b'{"ms": 60000}'), timeout=RPC_TIMEOUT
            )
            wait_until(
                lambda: worker.stub.Health(pb.HealthRequest(), timeout=RPC_TIMEOUT).active_calls == 1,  # type: ignore[union-attr]
                5,
                "the sleep to start",
            )
            worker.stub.Stop(pb.StopRequest(grace_ms=100), timeout=RPC_TIMEOUT)
            self.assertEqual(worker.wait(timeout=10), 0)
            self.assertIsNotNone(pending.exception(timeout=RPC_TIMEOUT))


class NoStrayOutputTest(unittest.TestCase):
    def test_stdout_is_one_line_even_with_prints(self) -> None:
        with WorkerProcess(adapter="tests.fixture_adapters", watch_stdin=False) as worker:
            worker.read_ready()
            self.assertEqual(worker.result("noisy"), "printed")
            worker.proc.send_signal(signal.SIGTERM)
            self.assertEqual(worker.wait(), 0)
            self.assertEqual(worker.remaining_stdout(), b"")
            self.assertIn("noisy tool output", worker.stderr())


if __name__ == "__main__":
    unittest.main()
