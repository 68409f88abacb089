"""Process hygiene: the worker leads its own process group, adopts every process its tools
start (as a child subreaper, on Linux), dies with its host, and takes all of them along
however it exits.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import IO, NoReturn

log = logging.getLogger("snakepit_bridge")

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, arg: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, arg, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def reserve_stdout() -> IO[str]:
    """Keep the original stdout private; point fd 1 at stderr.

    Native code and child processes that inherit fd 1 then write to the log, never
    to whatever the host reads from the original stdout. The returned stream writes
    to a private, non-inheritable duplicate of it.
    """
    sys.stdout.flush()
    private = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(private, "w", encoding="utf-8", closefd=False)


def become_group_leader() -> None:
    """Lead our own process group so that killpg reaches exactly our descendants."""
    if os.getpgrp() != os.getpid():
        try:
            os.setpgrp()
        except OSError as exc:  # e.g. already a session leader
            log.warning("could not become a process group leader: %s", exc)


def die_with_parent() -> None:
    """Linux: get SIGTERM when the host dies (best effort; the channel's EOF is the other guard)."""
    if not _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM):
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")


def adopt_orphans() -> bool:
    """Linux: become the subreaper of everything our tools start.

    A tool's child that double-forks, or starts a new session, then stays our
    descendant instead of re-parenting to init, so :func:`kill_descendants` finds it.
    """
    ok = _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    if not ok:
        log.debug("prctl(PR_SET_CHILD_SUBREAPER) unavailable; descendants that leave our group may outlive us")
    return ok


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2:
            parents[int(entry)] = int(fields[1])
    return parents


def descendants() -> list[int]:
    """Every live descendant of this process (Linux), children first."""
    if not os.path.isdir("/proc"):
        return []
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found: list[int] = []
    frontier = [os.getpid()]
    while frontier:
        pid = frontier.pop()
        for child in children.get(pid, []):
            found.append(child)
            frontier.append(child)
    return found


def kill_descendants() -> None:
    """SIGKILL every process our tools started: our process group and every descendant."""
    me = os.getpid()
    if os.path.isdir("/proc"):
        # A few passes: a child may fork while its parent is being killed.
        for _ in range(4):
            victims = set(descendants())
            if os.getpgrp() == me:
                victims.update(_group_members())
            victims.discard(me)
            if not victims:
                return
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        return
    if os.getpgrp() == me:
        # Without /proc: signal the group while ignoring the signal ourselves.
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            os.killpg(me, signal.SIGTERM)
        except OSError:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)


def _group_members() -> list[int]:
    group = os.getpgrp()
    members: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == group:
            members.append(int(entry))
    return members


def exit_now(code: int) -> NoReturn:
    """Leave at once, taking every descendant along.

    ``os._exit`` rather than ``sys.exit``: a tool thread blocked in a long call would
    otherwise keep the interpreter alive while it joins threads.
    """
    # A tool may hold the GIL in a pure-Python loop on another thread. Every /proc read below
    # gives the GIL up, and getting it back would wait a whole switch interval (5 ms) each time:
    # seconds on a machine with many processes. From here on, only leaving matters.
    sys.setswitchinterval(1e-6)
    kill_descendants()
    logging.shutdown()
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


def die_with_host(reason: str) -> NoReturn:
    log.error("%s: the host is gone; exiting with every process our tools started", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    exit_now(1)


def watch_stdin() -> None:
    """The host holds our stdin open; EOF means it died. Watched from a daemon thread."""

    def run() -> None:
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
        die_with_host("stdin reached EOF")

    if os.environ.get("SNAKEPIT_NO_STDIN_WATCH"):
        log.debug("SNAKEPIT_NO_STDIN_WATCH is set; not watching stdin")
        return
    threading.Thread(target=run, name="snakepit-stdin-watch", daemon=True).start()


_sigterm_action: list[Callable[[], None]] = []


def on_sigterm(action: Callable[[], None]) -> None:
    """What SIGTERM does from now on; it runs on the signal thread (see ``route_sigterm``)."""
    _sigterm_action[:] = [action]


def route_sigterm(action: Callable[[], None]) -> None:
    """Runs ``action`` on a thread of its own on every SIGTERM, whichever thread receives it.

    A Python handler runs only on the main thread, and only once that thread runs bytecode
    again. The kernel may deliver SIGTERM to any thread; the main thread may be blocked in
    ``recv`` on the call channel, which only a signal delivered to it would interrupt. So
    SIGTERM goes through the wakeup fd instead (CPython writes the signal number there from
    whichever thread took it), and a daemon thread reads it. Nothing is blocked or masked:
    processes our tools start inherit an ordinary signal mask. Call from the main thread.
    """
    on_sigterm(action)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    # A Python-level handler must exist for CPython's C handler to write the wakeup fd.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def run() -> None:
        while True:
            try:
                data = os.read(read_end, 512)
            except InterruptedError:
                continue
            if not data:
                return
            if signal.SIGTERM in data:
                _sigterm_action[0]()

    threading.Thread(target=run, name="snakepit-signals", daemon=True).start()


def read_line_from_stdin(limit: int = 65536) -> bytes:
    """One line from fd 0, read unbuffered so the stdin watch sees the rest of the stream."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ValueError("bootstrap line is too long")
    return bytes(data)
