"""hygiene.py: a process that leads its group and adopts orphans reaches every process it started.

The process under test is a helper subprocess (kill_descendants in this test process would
reach the test runner's own children); it reports the pids it started and kills on request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import unittest

from .worker_process import (
    TIMEOUT,
    kill_quietly,
    parent_of,
    pid_alive,
    python_env,
    wait_until,
)

# Starts a child in its own group (the default), one in a new session, and a double-forked
# daemon in a new session; reports them; kills its descendants when told to.
HELPER = r"""
import json, os, subprocess, sys
from snakepit_bridge import hygiene

hygiene.become_group_leader()
adopted = hygiene.adopt_orphans()
sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
group_child = subprocess.Popen(sleeper)
session_child = subprocess.Popen(sleeper, start_new_session=True)
daemon = subprocess.run([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, check=True, timeout=30)
print(json.dumps({
    "adopted": adopted,
    "group": os.getpgrp() == os.getpid(),
    "pids": [group_child.pid, session_child.pid, int(daemon.stdout)],
}), flush=True)
sys.stdin.readline()
hygiene.kill_descendants()
print(json.dumps({"left": hygiene.descendants()}), flush=True)
sys.stdin.readline()
"""


class KillDescendantsTest(unittest.TestCase):
    def test_reaches_a_new_session_and_a_double_forked_daemon(self) -> None:
        from .fixture_adapters import _DAEMON

        helper = subprocess.Popen(
            [sys.executable, "-c", HELPER, _DAEMON],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=python_env(),
        )
        pids: list[int] = []
        try:
            assert helper.stdin is not None and helper.stdout is not None
            started = json.loads(helper.stdout.readline())
            pids = started["pids"]
            self.assertTrue(started["group"], "the helper leads its process group")
            self.assertTrue(started["adopted"], "the helper is a child subreaper (Linux)")
            self.assertTrue(all(pid_alive(pid) for pid in pids))
            # The daemon's parents are gone: it was adopted by the helper, not by init.
            wait_until(lambda: parent_of(pids[2]) == helper.pid, TIMEOUT, "the helper to adopt the daemon")
            helper.stdin.write(b"kill\n")
            helper.stdin.flush()
            after = json.loads(helper.stdout.readline())
            wait_until(lambda: not any(pid_alive(pid) for pid in pids), TIMEOUT, f"{pids} to die")
            # The zombies it adopted are all that may be left, and the helper itself lives on.
            self.assertTrue(all(not pid_alive(pid) for pid in after["left"]))
            self.assertIsNone(helper.poll())
            helper.stdin.close()
            self.assertEqual(helper.wait(TIMEOUT), 0)
        finally:
            if helper.poll() is None:
                helper.kill()
                helper.wait(TIMEOUT)
            for pid in pids:
                kill_quietly(pid)
            if helper.stdout is not None:
                helper.stdout.close()

    def test_with_nothing_started_it_kills_nothing(self) -> None:
        code = (
            "from snakepit_bridge import hygiene; hygiene.become_group_leader(); "
            "hygiene.kill_descendants(); print('alive')"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, env=python_env(), timeout=TIMEOUT, check=False
        )
        self.assertEqual((done.returncode, done.stdout), (0, b"alive\n"))


if __name__ == "__main__":
    unittest.main()
