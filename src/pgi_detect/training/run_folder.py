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


class RunFolderTaken(RunFolderBusy):
    """A new fit (no `--ckpt_path` into this folder) would overwrite checkpoints an earlier run wrote there."""


def earlier_checkpoints(folders: list[Path]) -> list[Path]:
    """The checkpoint files already in a run's checkpoint folders (partial scratch files are not checkpoints)."""
    found: list[Path] = []
    for folder in dict.fromkeys(Path(f) for f in folders):
        if folder.is_dir():
            found += sorted(p for p in folder.glob("*.ckpt") if p.is_file())
    return found


def check_new_fit(run_folder: Path, checkpoint_folders: list[Path], ckpt_path: str | None, overwrite: bool,
                  remove: bool) -> None:
    """Refuse a fit that would overwrite another run's checkpoints, unless it resumes one of them or the user
    asked to overwrite (then `remove` deletes them first, so no stale file of the earlier run stays mixed in)."""
    existing = earlier_checkpoints(checkpoint_folders)
    if not existing:
        return
    if ckpt_path and ckpt_path != "last" and any(Path(ckpt_path).resolve() == p.resolve() for p in existing):
        return  # resuming (or restarting from) one of this run's own checkpoints
    if overwrite:
        if remove:
            for path in existing:
                path.unlink(missing_ok=True)
            logger.warning("fit --overwrite: removed %d checkpoint(s) of the earlier run in %s (%s)", len(existing),
                           existing[0].parent, ", ".join(p.name for p in existing))
        return
    names = ", ".join(p.name for p in existing[:4]) + (", ..." if len(existing) > 4 else "")
    if ckpt_path == "last":
        why = f"--ckpt_path last found no last*.ckpt, but {existing[0].parent} holds {names}"
    elif ckpt_path:
        why = f"{existing[0].parent} holds {names} of an earlier run, and --ckpt_path {ckpt_path} is not one of them"
    else:
        why = f"{existing[0].parent} holds {names} of an earlier run"
    raise RunFolderTaken(f"{why}; a new fit would overwrite them. Resume it with --ckpt_path last (or one of those "
                         f"files), start a new run beside it with --trainer.default_root_dir <another folder>, or "
                         f"replace it with --overwrite true")
