"""Pretrained weights by name: the official YOLOv9 / GELAN release assets, downloaded once into a cache, converted
to our detector file there, and read offline ever after.

Names (`list_pretrained()`): gelan-s/m/c/e and yolov9-s/m/c/e (yolov9 files hold the dual PGI model), and
yolov9-t/s/m/c/e-converted (the released inference form: the gelan table with yolov9 weights). The file's zoo model
is decided from its tensors (`identify.py`); a name whose file holds another model is an error.

Cache, following torch hub's conventions: `$PGI_DETECT_HOME` if set, else `<torch.hub.get_dir()>/pgi_detect`, i.e.
`$TORCH_HOME/hub/pgi_detect` (default `~/.cache/torch/hub/pgi_detect`):

    official/<name>.pt           the release asset as downloaded (`<name>.pt.partial` while downloading)
    converted/<name>.pt          our detector file made from it (spec, class names, weights): what loaders read

URL: `$PGI_DETECT_WEIGHTS_URL`, a template with `{name}` (default `RELEASE_URL`), e.g. for a mirror.
A broken transfer is resumed with an HTTP Range request (up to `attempts` tries); the size announced by the server
and, where the registry knows it, the SHA-256 are checked, and a file that does not unpickle as the expected model is
deleted. Downloads print one line and a progress bar on a terminal (stderr).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from tqdm import tqdm

from pgi_detect.text import class_count
from pgi_detect.weights.detector_file import save_detector
from pgi_detect.weights.state_fit import WeightsError
from pgi_detect.weights.identify import identify_zoo_model
from pgi_detect.weights.official import convert_official, read_official_file

RELEASE_URL = "https://github.com/WongKinYiu/yolov9/releases/download/v0.1/{name}.pt"
URL_ENV = "PGI_DETECT_WEIGHTS_URL"
HOME_ENV = "PGI_DETECT_HOME"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class PretrainedWeights:
    """A named release asset: the zoo model its tensors must be (`architecture`), the model it was trained as
    (`source_name`, e.g. yolov9-c for the gelan-c of yolov9-c-converted: what `list_pretrained` tells users) and,
    where known, its SHA-256
    (the official release publishes none, so the official entries rely on the size check and the model check)."""

    architecture: str
    source_name: str
    sha256: str | None = None


PRETRAINED: dict[str, PretrainedWeights] = {
    **{f"gelan-{size}": PretrainedWeights(f"gelan-{size}", f"gelan-{size}") for size in "smce"},
    **{f"yolov9-{size}": PretrainedWeights(f"yolov9-{size}", f"yolov9-{size}") for size in "smce"},
    **{f"yolov9-{size}-converted": PretrainedWeights(f"gelan-{size}", f"yolov9-{size}") for size in "tsmce"},
}


class WeightsDownloadError(WeightsError):
    """A pretrained file could not be fetched; the message says how to fetch it by hand."""


class _Interrupted(Exception):
    """A transfer that broke off after it started: worth resuming."""


def list_pretrained() -> list[str]:
    return list(PRETRAINED)


def weights_home() -> Path:
    """The cache folder: `$PGI_DETECT_HOME`, else `$TORCH_HOME/hub/pgi_detect` (torch hub's folder)."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else Path(torch.hub.get_dir()) / "pgi_detect"


def weights_url(name: str) -> str:
    return os.environ.get(URL_ENV, RELEASE_URL).format(name=name)


def official_cache_path(name: str) -> Path:
    """Where the downloaded release asset of `name` lives (and where a hand-fetched copy may be put)."""
    return weights_home() / "official" / f"{name}.pt"


def converted_cache_path(name: str) -> Path:
    return weights_home() / "converted" / f"{name}.pt"


def resolve_weights(value: str | Path, progress: bool | None = None) -> Path:
    """An existing file is itself; a pretrained name is its converted file in the cache (fetched on first use)."""
    path = Path(value)
    if path.is_file():
        return path
    if str(value) in PRETRAINED:
        return pretrained_path(str(value), progress=progress)
    raise FileNotFoundError(f"{value}: weights file not found, and not a pretrained name "
                            f"({', '.join(PRETRAINED)})")


def pretrained_path(name: str, progress: bool | None = None) -> Path:
    """The converted detector file of a pretrained name: from the cache, else made from the cached release asset,
    else downloaded first. Processes sharing the cache (DDP ranks) wait for each other instead of all downloading."""
    if name not in PRETRAINED:
        raise WeightsError(f"{name!r} is not a pretrained name; available: {', '.join(PRETRAINED)}")
    converted = converted_cache_path(name)
    if converted.is_file():
        return converted
    converted.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(converted) + ".lock"):
        if converted.is_file():  # made by another process while this one waited
            return converted
        official = official_cache_path(name)
        if not official.is_file():
            _download_or_explain(name, official, progress)
        _convert_release_asset(name, official, converted)
    return converted


def download(url: str, destination: Path, progress: bool | None = None, sha256: str | None = None,
             attempts: int = 3, timeout: float = 60.0) -> Path:
    """Fetch `url` to `destination` through `<destination>.partial`, resuming a broken transfer (HTTP Range).

    The partial file is renamed only once complete: as many bytes as the server announced and the given SHA-256.
    `progress`: show a bar (None: only when stderr is a terminal). A host that cannot be reached, an HTTP error or a
    checksum that stays wrong raises `WeightsDownloadError`; a connection broken mid-transfer is retried."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    show = sys.stderr.isatty() if progress is None else progress
    sys.stderr.write(f"Downloading {url} to {destination}\n")
    attempt = 1
    while True:
        try:
            _fetch(url, partial, show, timeout)
        except _Interrupted as broken:
            if attempt == attempts:
                raise WeightsDownloadError(f"{url}: download broke off {attempts} times ({broken}); the part fetched "
                                           f"so far is kept in {partial} and resumed next time") from None
            attempt += 1
            sys.stderr.write(f"download interrupted ({broken}); resuming (attempt {attempt}/{attempts})\n")
            continue
        if sha256 is None or _sha256(partial) == sha256:
            os.replace(partial, destination)
            return destination
        partial.unlink()
        if attempt == attempts:
            raise WeightsDownloadError(f"{url}: the downloaded file does not have the expected SHA-256 {sha256} "
                                       f"({attempts} tries); nothing was kept")
        attempt += 1
        sys.stderr.write(f"checksum mismatch; downloading again (attempt {attempt}/{attempts})\n")


# ---------------------------------------------------------------------------------------------------------- internals


def _download_or_explain(name: str, official: Path, progress: bool | None) -> None:
    url = weights_url(name)
    try:
        download(url, official, progress=progress, sha256=PRETRAINED[name].sha256)
    except WeightsDownloadError as error:
        raise WeightsDownloadError(f"could not download {name!r}: {error}\n{_manual_steps(name, url, official)}") \
            from None


def _manual_steps(name: str, url: str, official: Path) -> str:
    return (f"Pretrained weights {name!r} are downloaded once from {url} and cached in {weights_home()} "
            f"(${HOME_ENV} or $TORCH_HOME move it). Without network access, fetch the file elsewhere and put it at\n"
            f"  {official}\n"
            f"e.g. curl -L -o {official} {url}   (or: wget -O {official} {url})\n"
            f"and run again: it is converted on first use. Or convert it yourself and pass the file instead of the "
            f"name:\n  python scripts/convert_official.py --weights {name}.pt --output {name}-pgi.pt")


def _fetch(url: str, partial: Path, show: bool, timeout: float) -> None:
    """One request: append to `partial` from where it ends (206), or start over (200)."""
    have = partial.stat().st_size if partial.is_file() else 0
    headers = {"User-Agent": "pgi-detect", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the partial file is not a prefix of this file: start over
            partial.unlink()
            raise _Interrupted("the partial file did not fit the server's file") from None
        if error.code >= 500:
            raise _Interrupted(f"HTTP {error.code} {error.reason}") from None
        raise WeightsDownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise WeightsDownloadError(f"{url}: cannot connect ({reason})") from None
    with response:
        start, total = _resume_point(response, have)
        mode = "ab" if start else "wb"
        try:
            with open(partial, mode) as file, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                                   unit_divisor=1024, desc=partial.name.removesuffix(".partial"),
                                                   disable=not show, file=sys.stderr) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    file.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:
            raise _Interrupted(f"{type(error).__name__}: {error}") from None
    size = partial.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"{size} of {total} bytes received")
    if total is not None and size > total:
        partial.unlink()
        raise WeightsDownloadError(f"{url}: received {size} bytes, but the server announced {total}; nothing kept")


def _resume_point(response: http.client.HTTPResponse, have: int) -> tuple[int, int | None]:
    """(byte offset this response starts at, total file size if announced)."""
    if response.status == 206:
        match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == have:
            total = match.group(2)
            return have, None if total == "*" else int(total)
        raise _Interrupted("the server resumed at another offset than asked")
    length = response.headers.get("Content-Length")
    return 0, None if length is None else int(length)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _convert_release_asset(name: str, official: Path, converted: Path) -> None:
    """Check that the release asset holds the model its name stands for, and write our detector file for it. A file
    that cannot be read or holds another model is deleted, so the next call fetches it anew."""
    entry = PRETRAINED[name]
    try:
        weights = read_official_file(official)
        match = identify_zoo_model(weights.state, source=str(official))
        if match.model != entry.architecture:
            raise WeightsError(f"{official}: the file holds {match.model} weights, but {name!r} stands for "
                               f"{entry.architecture}")
        detector = convert_official(weights.state, match.model, source=str(official))
    except WeightsError as error:
        official.unlink()
        raise WeightsError(f"{error}\nThe file was deleted from the cache; {weights_url(name)} is fetched again on "
                           f"the next use.") from None
    scratch = converted.with_name(converted.name + ".tmp")
    save_detector(detector, scratch, class_names=weights.class_names)
    os.replace(scratch, converted)
    sys.stderr.write(f"Converted {name} ({match.model}, {class_count(match.num_classes)}) to {converted}\n")
