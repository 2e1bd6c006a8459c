"""One process builds a given artifact at a time: a lock file per stage and key.

``store/<stage>/.lock-<key>`` is created by one atomic ``link`` of a file that already holds
its owner (host, pid and the pid's start time, boot id, launch, a random token), so no process
ever sees a half-written lock, on a local disk or over NFS (``link`` is atomic there, unlike
``O_EXCL`` on old NFS clients). While held, a thread touches the file every
``LFVILA_LOCK_HEARTBEAT_S`` seconds (10) after checking that the token is still its own.

A lock outlives neither its holder nor a reboot. Another process takes it over when

* the holder ran on this host and is gone (its pid is not running, or runs another program,
  or the host has rebooted since) and the heartbeat has stopped for two intervals (a pid in
  another PID namespace sharing the host name still heartbeats); or
* the heartbeat has stopped for ``LFVILA_LOCK_STALE_S`` seconds (120): a holder on another host
  that crashed, lost its network or whose host went down.

Taking over renames the stale file aside (one rename wins) and checks that what it moved is
the stale lock it judged; if a fresh lock was moved instead it is linked back. The holder
re-checks its token before it commits, so in the worst case (a lock moved and replaced in
that instant) a commit stops with an error rather than two processes committing.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from ..errors import LfvilaError

log = logging.getLogger(__name__)


class LockError(LfvilaError):
    """A lock could not be taken, or was lost while held."""


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise LockError(f"{name} must be a number of seconds, got {os.environ.get(name)!r}") from None


def _host() -> str:
    import socket

    return socket.gethostname() or "host"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_start(pid: int) -> str:
    """When ``pid`` started (clock ticks since boot), to tell a reused pid from the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process not yet reaped is a zombie: as good as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def holder_gone(holder: dict) -> bool:
    """Whether a holder on this host has certainly stopped (for display; taking a lock over
    also waits for its heartbeat to stop)."""
    pid = holder.get("pid")
    return holder.get("host") == _host() and isinstance(pid, int) and not pid_running(pid)


def describe_holder(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (since {started})"


class FileLock:
    """An exclusive lock on ``path`` with heartbeat and stale-lock takeover (module docstring)."""

    def __init__(self, path: str | Path, *, launch: str = "", stale_after_s: float | None = None, heartbeat_s: float | None = None) -> None:
        self.path = Path(path)
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else _env_seconds("LFVILA_LOCK_HEARTBEAT_S", 10.0)
        self.stale_after_s = stale_after_s if stale_after_s is not None else _env_seconds("LFVILA_LOCK_STALE_S", 120.0)
        self.token = uuid.uuid4().hex
        self.record = {
            "token": self.token,
            "host": _host(),
            "pid": os.getpid(),
            "pid_start": _pid_start(os.getpid()),
            "boot_id": _boot_id(),
            "launch": launch,
            "started": time.time(),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:6])),
        }
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading a lock -----------------------------------------------------------------
    def read(self) -> dict | None:
        """The holder's record; ``{}`` for a lock file that cannot be parsed; ``None`` if unlocked."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            record = json.loads(text)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def _heartbeat_age(self) -> float | None:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def stale_reason(self, holder: dict) -> str | None:
        """Why the lock held by ``holder`` is stale, or ``None`` while its holder may be alive."""
        age = self._heartbeat_age()
        if age is None:
            return None  # released meanwhile
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f}s (LFVILA_LOCK_STALE_S={self.stale_after_s:g})"
        if holder.get("host") != _host() or age <= 2 * self.heartbeat_s:
            return None
        if holder.get("boot_id") and holder.get("boot_id") != _boot_id():
            return "its host has rebooted since"
        pid = holder.get("pid")
        if isinstance(pid, int):
            if not pid_running(pid):
                return f"pid {pid} is not running"
            if holder.get("pid_start") and _pid_start(pid) != holder.get("pid_start"):
                return f"pid {pid} is another process now"
        return None

    # --- taking and giving back -----------------------------------------------------------
    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{self.token}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError as exc:  # a filesystem without hard links: O_EXCL, then the content
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(self.record, fh)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _break(self, judged: dict) -> None:
        """Move the stale lock ``judged`` out of the way (see the module docstring)."""
        current = self.read()
        if current is None or current.get("token") != judged.get("token"):
            return  # changed since it was judged: judge again
        aside = self.path.with_name(f"{self.path.name}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            moved = {}
        if moved.get("token") != judged.get("token"):
            try:  # a fresh lock was taken in between: give it back
                os.link(aside, self.path)
            except OSError:
                pass  # yet another was made: its holder's token check stops the one we moved
        aside.unlink(missing_ok=True)

    def acquire(self, on_wait: Callable[[dict], None] | None = None, poll_s: float = 0.5, notify_every_s: float = 600.0) -> None:
        """Take the lock, waiting while a live holder has it (``on_wait(holder)`` when the wait
        starts and every ``notify_every_s``), taking over a stale one (logged)."""
        last_notice = None
        delay = min(0.05, poll_s)
        while True:
            if self._try_create():
                self._start_heartbeat()
                return
            holder = self.read()
            if holder is None:
                continue
            if holder == {}:  # being written by a filesystem without hard links, or garbage
                reason = None
                age = self._heartbeat_age()
                if age is not None and age > max(2 * self.heartbeat_s, 5.0):
                    reason = f"unreadable lock file, untouched for {age:.0f}s"
            else:
                reason = self.stale_reason(holder)
            if reason:
                log.warning("%s: taking over a stale lock of %s: %s", self.path, describe_holder(holder), reason)
                self._break(holder)
                continue
            now = time.monotonic()
            if on_wait is not None and (last_notice is None or now - last_notice >= notify_every_s):
                on_wait(holder)
                last_notice = now
            time.sleep(delay)
            delay = min(delay * 2, poll_s)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="lfvila-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = self.read()
            if holder is None or holder.get("token") != self.token:
                self.lost = f"{self.path} was taken over by {describe_holder(holder or {})}"
                log.error("lost the lock: %s", self.lost)
                return
            try:
                os.utime(self.path)
            except OSError as exc:
                log.warning("%s: cannot refresh the lock's heartbeat (%s)", self.path, exc)

    def check(self) -> None:
        """Raise ``LockError`` unless this process still holds the lock (before a commit)."""
        holder = self.read()
        if self.lost is None and (holder is None or holder.get("token") != self.token):
            self.lost = f"{self.path} is now held by {describe_holder(holder or {})}" if holder else f"{self.path} was removed"
        if self.lost is not None:
            raise LockError(f"lost the lock while working ({self.lost}); nothing was committed")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder = self.read()
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
