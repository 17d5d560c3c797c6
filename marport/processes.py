"""Process and port utilities shared by the launchers (local TorchServe, the SageMaker toolkit)."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import time

import psutil


def free_port() -> int:
    """A port nothing listens on right now, on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(proc: psutil.Process | int) -> bool:
    """Running, not merely exited: a zombie has exited, and whether anyone reaps it
    (PID 1 in a container may not) is not ours to wait for."""
    try:
        proc = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process_family(proc: psutil.Process | int | None) -> list[psutil.Process]:
    """A process and all its descendants; empty if it is gone."""
    if proc is None:
        return []
    try:
        root = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


KILL_WAIT_S = 5  # SIGKILL cannot be refused; this only covers the kernel's tearing down of a large process


def end_processes(procs: list[psutil.Process], timeout: float) -> None:
    """Wait up to `timeout` for processes already told to stop, then kill what is left and wait until none
    of them runs, so that a caller who returns has really stopped them."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    for proc in procs:
        if alive(proc):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
    deadline = time.monotonic() + KILL_WAIT_S
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)


STOP_GRACE_S = 5  # for a server's own shutdown after SIGTERM; process managers allow 10 s (docker stop) to 30 s


def terminate(procs: list[psutil.Process], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to every process still running, SIGKILL to what is left after `grace_s`; returns once none runs.
    Nothing in it waits on something load can stretch (a helper process's start-up, a busy worker's call)."""
    for proc in procs:
        if alive(proc):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
    end_processes(procs, grace_s)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived: unwinds like Ctrl-C, so every `finally` and `with` that started a
    server stops it (Python's default for SIGTERM is to die on the spot and leave children running)."""


def _raise_stopped(signum, _frame):
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not interrupt the stopping itself
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """Make SIGTERM (process managers, `kill`) unwind the main thread as SIGINT (Ctrl-C) does."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_stopped)


def error_of(lines: list[str], width: int = 300) -> str:
    """What a failed Python process said: the exception its traceback ends with (a message may span lines),
    else its last lines; each line cut at `width` characters (a state_dict mismatch lists every key)."""
    lines = [line.strip() for line in lines if line.strip()]
    start = max(0, len(lines) - 6)
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"[\w.]*(Error|Exception)\b", lines[i]):
            start = i
            break
    shown = [line if len(line) <= width else line[:width] + " ..." for line in lines[start:start + 6]]
    return "\n  ".join(shown) or "no output"
