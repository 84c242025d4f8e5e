"""One fit per run folder: a second `pgi-detect fit` into a folder another live fit writes is refused, because both
would write best/last/config.yaml and the other run's results would be silently lost.

The lock is an advisory POSIX record lock (`lockf`) on `<run folder>/.pgi-detect-fit.lock`, held by the fit's rank-0
process for as long as it trains. The operating system drops it when that process ends, however it ends (kill -9, a
SLURM requeue on another node), so there is no stale lock to clean up; the file only tells the refused fit who holds
the folder. A record lock belongs to the process, so the DataLoader workers it forks do not keep it alive (an `flock`
would live on in them).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".pgi-detect-fit.lock"
logger = logging.getLogger(__name__)


class RunFolderBusy(OSError):
    """Another live fit writes into the same run folder."""


class RunFolderLock:
    """Context manager: holds the run folder's lock while a fit runs (a no-op where `fcntl` does not exist)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._handle: int | None = None

    def __enter__(self) -> RunFolderLock:
        try:
            import fcntl  # POSIX only
        except ImportError:  # Windows: no advisory locks of this kind
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):  # a file system without locks (some NFS set-ups)
                os.close(handle)
                logger.warning("cannot lock the run folder %s (%s): a second fit into it would not be noticed",
                               self.path.parent, error.strerror)
                return self
            holder = _read_holder(handle)
            os.close(handle)
            raise RunFolderBusy(f"{self.path.parent} is the run folder of another fit that is still running "
                                f"({holder}); give this run its own folder with --trainer.default_root_dir, or "
                                "wait for that one to end") from None
        os.ftruncate(handle, 0)
        os.write(handle, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._handle = handle
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._handle is not None:
            os.close(self._handle)  # closing the descriptor releases the lock
            self._handle = None


def _read_holder(handle: int) -> str:
    try:
        holder = json.loads(os.pread(handle, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
