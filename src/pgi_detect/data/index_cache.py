"""On-disk cache of a parsed annotation file's index (flat arrays + metadata), memory-mapped when read back.

Parsing COCO train2017's 450 MB of JSON takes most of a minute and the Python objects need gigabytes; the index
it yields is ~130 MB of flat arrays. The cache keeps those arrays in one file per annotation file:

* where: `$PGI_DETECT_CACHE_DIR`, else `$XDG_CACHE_HOME/pgi_detect/index`, else `~/.cache/pgi_detect/index`,
  never the dataset folder (often read-only or shared); file name = the annotation file's stem + a hash of its
  resolved path;
* key: the resolved path, size and modification time (ns) of the annotation file and `FORMAT_VERSION`; any
  difference means the entry is stale and is rebuilt (and overwritten);
* written to a temporary file in the same folder and renamed into place, so concurrent writers (DDP ranks) and
  readers never see half a file; a folder that cannot be written only costs the cache (one warning);
* read with `np.memmap`: every process mapping the file (ranks, DataLoader workers) shares its pages.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("pgi_detect.data")

# 2: numeric strings in a bbox are invalid boxes (version 1 read "5" as 5); 3: problems do not embed the annotation
# file's path as the first loader's working directory saw it
FORMAT_VERSION = 3
MAGIC = b"PGIINDEX"
ALIGN = 64
ENV_CACHE_DIR = "PGI_DETECT_CACHE_DIR"
# Smaller annotation files parse in well under a second: caching them would only litter the cache folder.
MIN_CACHED_BYTES = 4 * 2**20


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pgi_detect" / "index"


def file_key(path: Path) -> dict[str, Any]:
    """What identifies the content the index was built from."""
    resolved = path.resolve()
    stat = resolved.stat()
    return {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "version": FORMAT_VERSION}


def cache_path(path: Path, kind: str) -> Path:
    digest = hashlib.sha256(f"{kind}:{path.resolve()}".encode()).hexdigest()[:16]
    return cache_dir() / f"{path.stem}-{kind}-{digest}.idx"


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def read_index(path: Path, kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """(arrays memory-mapped read-only, metadata) of a fresh cache entry for annotation file `path`, else None."""
    target = cache_path(path, kind)
    try:
        with open(target, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            header_size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_size))
        if header.get("key") != file_key(path):
            return None
        mapped = np.memmap(target, np.uint8, mode="r")
    except (OSError, ValueError):
        return None
    body = _aligned(len(MAGIC) + 8 + header_size)
    arrays = {}
    for name, spec in header["arrays"].items():
        start, dtype, shape = body + spec["offset"], np.dtype(spec["dtype"]), tuple(spec["shape"])
        arrays[name] = mapped[start:start + dtype.itemsize * int(np.prod(shape))].view(dtype).reshape(shape)
    return arrays, header["meta"]


def write_index(path: Path, kind: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path | None:
    """Store the index of annotation file `path`; returns the cache file, or None when it cannot be written."""
    target = cache_path(path, kind)
    layout, offset = {}, 0
    for name, array in arrays.items():
        layout[name] = {"offset": offset, "dtype": array.dtype.str, "shape": list(array.shape)}
        offset += _aligned(array.nbytes)
    header = json.dumps({"key": file_key(path), "meta": meta, "arrays": layout}).encode()
    body = _aligned(len(MAGIC) + 8 + len(header))
    temporary = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
        with os.fdopen(descriptor, "wb") as f:
            f.write(MAGIC + len(header).to_bytes(8, "little") + header)
            for name, array in arrays.items():
                f.seek(body + layout[name]["offset"])
                f.write(np.ascontiguousarray(array).data)
            f.truncate(body + offset)
        os.replace(temporary, target)
    except OSError as exc:
        logger.warning("cannot write the annotation index cache %s (%s); set %s to a writable folder to cache it",
                       target, exc, ENV_CACHE_DIR)
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        return None
    return target
