"""Running one gpu_check step as a child process: its own process group (so a timeout or a termination ends
the servers and workers it started too), its output echoed line by line with a ``[step]`` prefix, its CPU time
measured. Standard library only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

POLL_S = 0.1
KILL_GRACE_S = 10.0
_LIVE: set[subprocess.Popen[str]] = set()  # every step process still running, for kill_all
_LIVE_LOCK = threading.Lock()
_TERMINATING = threading.Event()  # set by kill_all: a signal death is then the driver's doing, not the step's


@dataclass
class ProcessResult:
    """What a step process left: its exit status (``None`` when it was killed at its timeout or by
    ``kill_all``; a negative status is a signal that ended it), its output lines, wall seconds, and CPU seconds
    (user + system, its reaped descendants included; unlike wall time this does not grow with other programs'
    load)."""

    returncode: int | None
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu_s: float = 0.0


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all() -> None:
    """SIGTERM every running step's process group, SIGKILL what is left after the grace period (for the
    driver's own termination; each step's wait then returns ``None``)."""
    _TERMINATING.set()
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline:  # each step's own wait reaps its process and drops it from _LIVE
        with _LIVE_LOCK:
            if not _LIVE & set(procs):
                return
        time.sleep(POLL_S)
    for proc in procs:
        _signal_group(proc, signal.SIGKILL)


def run_step_process(name: str, cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> ProcessResult:
    """Run ``cmd`` in ``cwd`` in a new session, echo its output as ``[name] line``; at ``timeout`` seconds
    SIGTERM its group, then SIGKILL after a grace period.

    Raises:
        OSError: the command could not be started.
    """
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)  # fmt: skip
    with _LIVE_LOCK:
        _LIVE.add(proc)
    result = ProcessResult(returncode=None)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            result.lines.append(line.rstrip("\n"))
            print(f"[{name}] {line}", end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    status, killed_at = None, None
    while status is None:
        pid, raw, usage = os.wait4(proc.pid, os.WNOHANG)  # the child's rusage: why not proc.wait()
        if pid:
            status = os.waitstatus_to_exitcode(raw)
            proc.returncode = status  # reaped here, so Popen must not wait for it again
            result.cpu_s = usage.ru_utime + usage.ru_stime
            break
        now = time.monotonic()
        if killed_at is None and now - start > timeout:
            killed_at = now
            _signal_group(proc, signal.SIGTERM)
        elif killed_at is not None and now - killed_at > KILL_GRACE_S:
            _signal_group(proc, signal.SIGKILL)
        time.sleep(POLL_S)
    _signal_group(proc, signal.SIGKILL)  # whatever the step left behind in its group
    with _LIVE_LOCK:
        _LIVE.discard(proc)
    reader.join(timeout=5)
    result.returncode = None if killed_at is not None or (status < 0 and _TERMINATING.is_set()) else status
    result.seconds = time.monotonic() - start
    return result
