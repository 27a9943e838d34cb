"""Find an entry's weights file: the user cache, then a local mirror, then the official URL; edgeseg's own
trained weights are shipped in the package instead (`WeightsFile.bundled`).

Every file is checked against its sha256 before use; downloads land in a temp file and are renamed
into the cache only once the checksum matches, so the cache never holds a partial or wrong file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.request
from pathlib import Path

from tqdm import tqdm

from edgeseg.errors import EdgesegError
from edgeseg.io.files import atomic_path
from edgeseg.zoo.registry import TRAINED_DIR, WeightsFile

HOME_ENV = "EDGESEG_HOME"
MIRROR_ENV = "EDGESEG_MIRROR"


def cache_dir() -> Path:
    """Returns the edgeseg cache folder ($EDGESEG_HOME, default ~/.cache/edgeseg)."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "edgeseg")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path: Path, weights: WeightsFile, advice: str = "") -> Path:
    actual = sha256_of(path)
    if actual != weights.sha256:
        raise EdgesegError(
            f"checksum mismatch for {path}: sha256 {actual[:16]}..., expected {weights.sha256[:16]}...{advice}"
        )
    return path


def local_weights(weights: WeightsFile) -> Path | None:
    """Returns the first local copy (cache, then mirror; the package for bundled weights) without checking it,
    or None."""
    if weights.bundled:
        path = TRAINED_DIR / weights.filename
        return path if path.is_file() else None
    candidates = [cache_dir() / weights.filename]
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        candidates.append(Path(mirror) / weights.filename)
    return next((path for path in candidates if path.is_file()), None)


def resolve_weights(weights: WeightsFile, *, download: bool = True) -> Path:
    """Returns a verified local path to `weights`, downloading it into the cache if needed. A file found in the
    mirror is also copied into the cache, so later commands find it without the mirror (`make demo`, then
    `edgeseg predict` in a shell of one's own)."""
    if weights.bundled:
        return _bundled(weights)
    local = local_weights(weights)
    if local is not None:
        _verified(local, weights)
        return local if local.parent == cache_dir() else _cached_copy(local, weights)
    if not download:
        raise EdgesegError(_offline_message(weights))
    return _download(weights)


def _bundled(weights: WeightsFile) -> Path:
    """The package's copy of edgeseg's trained weights, checked; nothing to download, so a missing or damaged
    file is one line that says how to get a good one."""
    path = TRAINED_DIR / weights.filename
    if not path.is_file():
        raise EdgesegError(f"{path}: missing; these weights ship with edgeseg (reinstall it, or `git checkout` the "
                           "file in a clone)")
    return _verified(path, weights, advice="; reinstall edgeseg, or `git checkout` the file in a clone")


def _cached_copy(path: Path, weights: WeightsFile) -> Path:
    """Copies a verified mirror file into the cache (atomically, checked again); the mirror's path if the cache
    cannot be written, since the file itself is fine."""
    target = cache_dir() / weights.filename
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
            _verified(tmp, weights)
    except (OSError, EdgesegError):
        return path
    return target


def _offline_message(weights: WeightsFile) -> str:
    return (
        f"weights {weights.filename} not found locally and could not be downloaded from {weights.url}; "
        f"put the file in ${HOME_ENV} ({cache_dir()}) or in a folder named by ${MIRROR_ENV}"
    )


def _download(weights: WeightsFile) -> Path:
    target = cache_dir() / weights.filename
    try:
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(weights.url, timeout=30) as response, tqdm(
                total=int(response.headers.get("Content-Length") or weights.num_bytes),
                unit="B", unit_scale=True, desc=weights.filename,
            ) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
            _verified(tmp, weights)  # a mismatch raises: the temp file is removed, the cache stays clean
    except (OSError, http.client.HTTPException) as exc:
        raise EdgesegError(f"{_offline_message(weights)} ({exc})") from None
    return target
