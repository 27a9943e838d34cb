"""The run folder: config.json, log.jsonl, state.pt (what --resume trusts), RNG state; all written atomically.

state.pt holds only tensors, ints, floats and strings, so it loads with `torch.load(weights_only=True)`.
Its model is the training model (batch norm in place); the .safetensors checkpoints hold it folded.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from edgeseg.errors import EdgesegError
from edgeseg.io.files import atomic_path

# state.pt formats: 2 put batch norm in the model, with a PolynomialLR scheduler state; 3 keeps frozen batch norm's
# scale and shift fixed too (rows at norm 40), so a format-2 run resumes here only with batch statistics.
STATE_FORMAT = FROZEN_AFFINE_FORMAT = 3
READABLE_FORMATS = (2, STATE_FORMAT)
LOCK_NAME = ".edgeseg-run.lock"


@contextlib.contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Holds an exclusive lock on the run folder `out` (created if missing) for a whole run: a second run, or
    a --resume of a run still training, fails at once instead of mixing its files with this one's.

    The lock is the kernel's (flock): a run that dies, even by SIGKILL, releases it, so a stale lock file
    never blocks. The file holds the holder's pid, for the message.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise EdgesegError(f"cannot lock the run folder {out} ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise EdgesegError(f"{out} is in use by another training run (pid {holder}); wait for it to end, "
                               "or pick another -o/--output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            # Removed while still held, so the folder holds only the run's files; a run starting in this
            # instant finds state.pt or config.json and stops there.
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the lock


def write_json(path: Path, data: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))


def read_log(path: str | Path) -> list[dict]:
    """Returns the rows of a run's log.jsonl (steps: loss, lr; epochs: train_loss, val_miou, ...)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": STATE_FORMAT, **state}, tmp)


def load_state(path: Path, device: torch.device) -> dict:
    """Returns a state.pt written by `save_state`, or raises one line."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise EdgesegError(f"{path}: cannot load ({exc})") from None
    if state.get("format") not in READABLE_FORMATS:
        raise EdgesegError(f"{path}: state format {state.get('format')}, this edgeseg reads "
                           f"{', '.join(map(str, READABLE_FORMATS))}")
    return state


def rng_state() -> dict:
    """Returns the torch, numpy and Python RNG states as tensors and numbers."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
