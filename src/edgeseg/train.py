"""Fine-tuning (`edgeseg train`): DeepLab's recipe on any VOCdevkit or images/ + masks/ dataset.

Recipe: random scale 0.5-2.0, pad with the mean pixel (label 255), random crop, horizontal flip;
x*2/255-1; SGD with momentum 0.9, poly learning rate (power 0.9), weight decay on conv weights;
cross-entropy on logits upsampled to the crop, label 255 ignored. Validation mIoU after each epoch.

Reproducible and resumable: the data order of epoch e comes from (seed, e) and each sample's
augmentation from (seed, e, index), so an interrupted run resumed from RUNDIR/state.pt continues
exactly as if it had not stopped. `--batch-size` is the global batch: under torchrun each of the
W processes takes every W-th sample of it, and the loss is normalised by the global count of
labelled pixels, so a DDP run computes the same updates as one process (up to float summation order).

Run folder: config.json, log.jsonl, last.safetensors, best.safetensors (best val mIoU; loads with
`--weights` like any zoo model), state.pt (model, optimizer, step, RNG; `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgeseg.data import RemappedDataset, label_lut, resolve_label_map
from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_path, ensure_writable_dir
from edgeseg.pipeline import DEEPLAB
from edgeseg.registry import Preprocess
from edgeseg.voc import IGNORE_INDEX, VOC_CLASSES

DEFAULT_INIT = "deeplabv3_mnv2_dm05_voc"
STATE_FORMAT = 1
SCALE_RANGE = (0.5, 2.0)
POLY_POWER = 0.9

# Options whose value shapes the run; resuming keeps them from config.json. The learning rate is far below
# DeepLab's 0.007: the imported weights have batch norm folded in, so no BN rescales the updates. 0.007
# made the loss jump to 10-1000x its start within a few steps, and 0.001 collapsed person-vs-rest on VOC
# to predicting background within one epoch (val mIoU 88 -> 49); 1e-4 fine-tunes steadily.
DEFAULTS: dict[str, object] = {
    "data": None, "train_split": "train", "val_split": "val", "init": DEFAULT_INIT, "classes": None,
    "label_map": "auto", "epochs": 10, "batch_size": 8, "crop": 513, "lr": 1e-4, "weight_decay": 4e-5,
    "momentum": 0.9, "seed": 0, "max_steps": None, "val_limit": None,
}
# Options a resumed run may change (--workers is not part of the config at all).
RESUME_OVERRIDES = ("epochs",)


# Classes and label remapping ---------------------------------------------------------------------

def resolve_classes(spec: str | None, init: str) -> tuple[str, ...]:
    """Returns the class names that `--classes` names: a comma-separated list, or a count N."""
    from edgeseg.registry import get_entry

    entry = get_entry(init)
    if spec is None or not str(spec).strip():
        return entry.class_names
    spec = str(spec).strip()
    if spec.isdigit():
        n = int(spec)
        if n < 2:
            raise EdgesegError(f"--classes {spec}: need at least 2 classes")
        return entry.class_names if n == entry.num_classes else tuple(f"class_{i}" for i in range(n))
    names = tuple(name.strip() for name in spec.split(","))
    if any(not name for name in names):
        raise EdgesegError(f"--classes {spec!r}: empty class name")
    if len(set(names)) != len(names):
        raise EdgesegError(f"--classes {spec!r}: a class is named twice")
    if len(names) < 2:
        raise EdgesegError(f"--classes {spec!r}: need at least 2 classes")
    return names


def validate_dataset(dataset: RemappedDataset, num_labels: int, *, progress: bool = False) -> None:
    """Loads every pair; raises one line naming the bad files (unreadable, size mismatch, label out of range).

    `num_labels` bounds the source labels (before remapping); 255 is always allowed.
    """
    from tqdm import tqdm

    bad: list[str] = []
    for sample in tqdm(dataset.samples, desc="check data", unit="img", disable=not progress, file=sys.stderr):
        try:
            _, mask = dataset.base.load(sample)
        except EdgesegError as exc:
            bad.append(str(exc))
            continue
        values = np.unique(mask)
        out = values[(values >= num_labels) & (values != IGNORE_INDEX)]
        if out.size:
            bad.append(f"{sample.mask_path.name}: labels {out.tolist()[:5]} "
                       f"not in 0..{num_labels - 1} or 255")
    if bad:
        raise EdgesegError(f"{dataset.base.description}: {len(bad)} of {len(dataset)} image/mask pairs "
                           f"are bad, e.g. {'; '.join(bad[:3])}")


# Augmentation and batches ------------------------------------------------------------------------

def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, crop: int,
            preprocess: Preprocess = DEEPLAB) -> tuple[np.ndarray, np.ndarray]:
    """Returns (float32 (crop, crop, 3) normalized pixels, uint8 (crop, crop) labels), DeepLab style.

    Random scale in SCALE_RANGE (bilinear image, nearest mask), pad bottom/right to at least the crop
    with the mean pixel (0 after scaling) and label 255, random crop, horizontal flip with p=0.5.
    """
    scale = rng.uniform(*SCALE_RANGE)
    height, width = mask.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    h, w = mask.shape
    ph, pw = max(h, crop), max(w, crop)
    pixels = np.full((ph, pw, 3), preprocess.pad_value, dtype=np.float32)
    pixels[:h, :w] = image.astype(np.float32) * preprocess.scale + preprocess.offset
    labels = np.full((ph, pw), IGNORE_INDEX, dtype=np.uint8)
    labels[:h, :w] = mask
    top, left = int(rng.integers(0, ph - crop + 1)), int(rng.integers(0, pw - crop + 1))
    pixels, labels = pixels[top:top + crop, left:left + crop], labels[top:top + crop, left:left + crop]
    if rng.random() < 0.5:
        pixels, labels = pixels[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(pixels), np.ascontiguousarray(labels)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """Returns the sample order of an epoch, a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class TrainCrops:
    """Map-style dataset indexed by (epoch, sample index): its augmentation depends on nothing else."""

    def __init__(self, dataset: RemappedDataset, crop: int, seed: int) -> None:
        self.dataset, self.crop, self.seed = dataset, crop, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        import torch

        epoch, index = key
        image, mask = self.dataset.load(self.dataset.samples[index])
        pixels, labels = augment(image, mask, sample_rng(self.seed, epoch, index), self.crop)
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy()), torch.from_numpy(labels.astype(np.int64))


class EpochBatches:
    """Batch sampler: the epoch's global batches in order, this rank's share (every world-th sample)."""

    def __init__(self, n: int, batch_size: int, steps: int, seed: int, epoch: int, rank: int, world: int):
        self.n, self.batch_size, self.steps = n, batch_size, steps
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        order = epoch_order(self.seed, self.epoch, self.n)
        for step in range(self.steps):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in batch[self.rank::self.world]]


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = POLY_POWER) -> float:
    return base_lr * (1.0 - step / total_steps) ** power


# Distributed -------------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        import torch
        import torch.distributed as td

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        td.all_reduce(t)
        return t.tolist()

    def broadcast(self, value):
        if not self.enabled:
            return value
        import torch.distributed as td

        box = [value]
        td.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed() -> Dist:
    """Returns this process's rank/world/device; starts the process group when WORLD_SIZE > 1."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device="cuda" if torch.cuda.is_available() else "cpu")
    import torch.distributed as td

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        device, backend = "cpu", "gloo"
    if not td.is_initialized():
        td.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def close_distributed(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()


# RNG state (tensors, ints, floats only: loadable with weights_only=True) ----------------------------

def rng_state() -> dict:
    import torch

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
    import torch

    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int, device: str) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.startswith("cuda"):
        # The bilinear upsampling backward has no deterministic CUDA kernel, so only cuDNN is pinned.
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(True)


# Configuration -----------------------------------------------------------------------------------

def _normalized(key: str, value, init: str):
    if value is None:
        return None
    if key == "data":
        return str(Path(value).resolve())
    if key == "classes":
        return ",".join(resolve_classes(value, init))
    return value


def _given(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None}


def resolve_config(args: argparse.Namespace) -> tuple[dict, bool]:
    """Returns (config, resuming). A new run fills defaults; a resumed one reads RUNDIR/config.json."""
    given = _given(args)
    if args.resume is not None:
        run_dir = Path(args.resume)
        config_path = run_dir / "config.json"
        if not (run_dir / "state.pt").is_file() or not config_path.is_file():
            raise EdgesegError(f"--resume {run_dir}: no run to resume (needs config.json and state.pt there)")
        if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
            raise EdgesegError("--resume continues in its own folder; drop --out")
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise EdgesegError(f"{config_path}: cannot read ({exc})") from None
        init = config["init"]
        for key, value in given.items():
            if key in RESUME_OVERRIDES:
                continue
            if _normalized(key, value, init) != _normalized(key, config.get(key), init):
                raise EdgesegError(f"--{key.replace('_', '-')} {value} differs from the run being resumed "
                                   f"({config.get(key)}); only --epochs can change")
        if args.epochs is not None:
            config["epochs"] = args.epochs
        config["out"] = str(run_dir.resolve())
        return config, True
    if args.data is None:
        raise EdgesegError("--data DIR is required (or --resume RUNDIR)")
    config = {**DEFAULTS, **given}
    data = Path(config["data"])
    if not data.is_dir():
        raise EdgesegError(f"{data}: no such folder")
    config["data"] = str(data.resolve())
    names = resolve_classes(config["classes"], config["init"])
    config["classes"] = ",".join(names)
    config["label_map"] = resolve_label_map(config["label_map"], names, data)
    for key in ("epochs", "batch_size", "crop"):
        if config[key] < 1:
            raise EdgesegError(f"--{key.replace('_', '-')} must be at least 1")
    if config["crop"] < 33:
        raise EdgesegError("--crop must be at least 33 pixels")
    if config["lr"] <= 0:
        raise EdgesegError("--lr must be positive")
    for key in ("max_steps", "val_limit"):
        if config[key] is not None and config[key] < 1:
            raise EdgesegError(f"--{key.replace('_', '-')} must be at least 1")
    for key in ("momentum", "weight_decay", "seed"):
        if config[key] < 0:
            raise EdgesegError(f"--{key.replace('_', '-')} must be 0 or more")
    if not (data / "ImageSets").is_dir() and not (data / config["train_split"] / "images").is_dir():
        # One images/ + masks/ pair would train and validate on the same images.
        raise EdgesegError(f"{data}: one images/ + masks/ pair has no separate val split; use "
                           f"{data}/train/{{images,masks}} and {data}/val/{{images,masks}}")
    if args.out is not None:
        config["out"] = str(Path(args.out).resolve())
    else:
        config["out"] = str(Path("runs", f"{config['init']}-{time.strftime('%Y%m%d-%H%M%S')}").resolve())
    return config, False


def _write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Evaluation helpers ------------------------------------------------------------------------------

class RemappedRuntime:
    """Wraps a runtime so its predicted labels go through a lookup table (e.g. 21 VOC classes -> 2)."""

    def __init__(self, runtime, lut: np.ndarray, num_classes: int) -> None:
        self.runtime, self.lut, self.num_classes = runtime, lut, num_classes
        self.name, self.input_size = f"{runtime.name}->remapped", runtime.input_size

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.lut[self.runtime.predict(pixels)]


def evaluate_remapped_pretrained(init: str, data: str | Path, split: str, classes: str | tuple[str, ...], *,
                                 limit: int | None = None, progress: bool = True, device: str = "cpu"):
    """Returns the EvalResult of zoo model `init` on a remapped task, e.g. person vs rest.

    Its VOC predictions and the VOC masks both go through the same table (listed classes -> their
    index in `classes`, all others -> 0), so the number is comparable with a fine-tuned model's.
    """
    from edgeseg.data import open_dataset
    from edgeseg.evaluate import evaluate
    from edgeseg.registry import get_entry
    from edgeseg.runtimes.torch import TorchRuntime
    from edgeseg.zoo import create_model

    names = tuple(classes.split(",")) if isinstance(classes, str) else tuple(classes)
    entry = get_entry(init)
    if entry.class_names != VOC_CLASSES:
        raise EdgesegError(f"{init}: not a VOC model, cannot remap its predictions to {','.join(names)}")
    resolve_label_map("voc", names, Path(data))  # checks the names
    lut = label_lut("voc", names)
    dataset = RemappedDataset(open_dataset(data, split), lut, names, limit)
    runtime = TorchRuntime(create_model(init), num_classes=entry.num_classes, device=device,
                           name=f"torch:{init}")
    return evaluate(RemappedRuntime(runtime, lut, len(names)), dataset, names, progress=progress)


# Training ----------------------------------------------------------------------------------------

def run_training(config: dict, *, resume: bool = False, dist: Dist | None = None, workers: int = 0,
                 progress: bool = True, stop_after_epoch: int | None = None, baseline: bool = False) -> dict:
    """Trains (or continues) the run described by `config`; returns a summary dict."""
    import torch

    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _run_training(config, resume=resume, dist=dist or Dist(), workers=workers, progress=progress,
                             stop_after_epoch=stop_after_epoch, baseline=baseline)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _run_training(config: dict, *, resume: bool, dist: Dist, workers: int, progress: bool,
                  stop_after_epoch: int | None, baseline: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from edgeseg.data import open_dataset
    from edgeseg.evaluate import evaluate
    from edgeseg.registry import get_entry
    from edgeseg.runtimes.torch import TorchRuntime
    from edgeseg.zoo import create_model, save_checkpoint

    out = Path(config["out"])
    names = tuple(config["classes"].split(","))
    num_classes = len(names)
    lut = label_lut(config["label_map"], names)
    source_labels = len(VOC_CLASSES) if lut is not None else num_classes
    base_entry = get_entry(config["init"])
    entry = dataclasses.replace(base_entry, class_names=names)
    show = progress and dist.is_main

    # Data, checked in full before any training.
    train_set = RemappedDataset(open_dataset(config["data"], config["train_split"]), lut, names)
    val_set = RemappedDataset(open_dataset(config["data"], config["val_split"]), lut, names,
                              config["val_limit"])
    validate_dataset(train_set, source_labels, progress=show)
    validate_dataset(val_set, source_labels, progress=show)
    batch_size, world = config["batch_size"], dist.world
    if batch_size % world:
        raise EdgesegError(f"--batch-size {batch_size} is the global batch; "
                           f"it must divide among {world} processes")
    steps_per_epoch = len(train_set) // batch_size
    if steps_per_epoch == 0:
        raise EdgesegError(f"{train_set.description}: {len(train_set)} images, "
                           f"fewer than --batch-size {batch_size}")
    if config["max_steps"] is not None:
        steps_per_epoch = min(steps_per_epoch, config["max_steps"])
    epochs = config["epochs"]
    total_steps = epochs * steps_per_epoch

    if not resume and (out / "state.pt").exists():
        raise EdgesegError(f"{out} already holds a run; resume it with --resume {out}, or pick another --out")
    if baseline and lut is None and names != base_entry.class_names:
        raise EdgesegError("--baseline needs --classes that the init model's classes map onto")
    if dist.is_main:
        ensure_writable_dir(out)
    dist.barrier()

    device = torch.device(dist.device)
    seed_everything(config["seed"], dist.device)
    model = create_model(config["init"], class_names=names).to(device).train()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=config["lr"], momentum=config["momentum"],
    )
    start_epoch, step, best_miou, best_epoch = 1, 0, None, None
    log_rows: list[dict] = []
    if resume:
        try:
            state = torch.load(out / "state.pt", map_location=device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
            raise EdgesegError(f"{out / 'state.pt'}: cannot load ({exc})") from None
        if state.get("format") != STATE_FORMAT:
            raise EdgesegError(f"{out / 'state.pt'}: unknown state format {state.get('format')}")
        if state["steps_per_epoch"] != steps_per_epoch:
            raise EdgesegError(f"{out}: the data now gives {steps_per_epoch} steps per epoch, "
                               f"the run had {state['steps_per_epoch']}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        best_miou, best_epoch = state["best_miou"], state["best_epoch"]
        log_rows = [row for row in read_log(out / "log.jsonl") if row["epoch"] <= state["epoch"]]
        if start_epoch > epochs:
            if dist.is_main:
                print(f"{out}: already trained {state['epoch']} epochs; pass --epochs N (> {state['epoch']}) "
                      "to train further")
            return {"out": str(out), "epochs": state["epoch"], "best_miou": best_miou,
                    "best_epoch": best_epoch}
    elif dist.is_main:
        _write_json(out / "config.json", {k: v for k, v in config.items() if k != "out"})

    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [dist.local_rank] if device.type == "cuda" else None
        ddp_model = DistributedDataParallel(model, device_ids=device_ids)
    else:
        ddp_model = model

    def validate(name: str) -> float | None:
        if len(val_set) == 0:
            return None
        runtime = TorchRuntime(model, num_classes=num_classes, device=dist.device, name=name)
        result = evaluate(runtime, val_set, names, progress=show)
        model.train()
        return round(100 * result.miou, 4)

    if baseline and not resume and dist.is_main:
        if lut is not None:
            result = evaluate_remapped_pretrained(
                config["init"], config["data"], config["val_split"], names,
                limit=config["val_limit"], progress=show, device=dist.device)
            miou = round(100 * result.miou, 4)
        else:
            miou = validate(f"{config['init']} (pretrained)")
        log_rows.append({"epoch": 0, "step": 0, "baseline_miou": miou})
        print(f"baseline: {config['init']} as is, {','.join(names)}: val mIoU {miou:.2f}")
    dist.barrier()

    loader_kwargs = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    summary: dict = {"out": str(out)}
    for epoch in range(start_epoch, epochs + 1):
        start = time.perf_counter()
        sampler = EpochBatches(len(train_set), batch_size, steps_per_epoch, config["seed"], epoch,
                               dist.rank, world)
        loader = torch.utils.data.DataLoader(TrainCrops(train_set, config["crop"], config["seed"]),
                                             batch_sampler=sampler, **loader_kwargs)
        bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", unit="step", disable=not show, file=sys.stderr)
        losses = []
        for pixels, labels in bar:
            pixels, labels = pixels.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            lr = poly_lr(config["lr"], step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Normalise by the labelled pixels of the whole global batch, so DDP's gradient average
            # equals the single-process gradient.
            (labelled,) = dist.all_sum([float((labels != IGNORE_INDEX).sum())])
            logits = ddp_model(pixels)
            loss_sum = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
            loss = loss_sum * (world / max(labelled, 1.0))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            (global_loss,) = dist.all_sum([float(loss_sum.detach()) / max(labelled, 1.0)])
            if not math.isfinite(global_loss):
                raise EdgesegError(f"epoch {epoch}, step {step}: loss is {global_loss}; try a lower --lr")
            losses.append(global_loss)
            log_rows.append({"epoch": epoch, "step": step, "loss": round(global_loss, 6), "lr": lr})
            bar.set_postfix(loss=f"{global_loss:.4f}", lr=f"{lr:.2e}")
        bar.close()
        train_loss = float(np.mean(losses))
        seconds = time.perf_counter() - start
        if dist.is_main:
            miou = validate(f"epoch {epoch}")
            improved = miou is not None and (best_miou is None or miou > best_miou)
            if improved or (miou is None and best_miou is None):
                best_miou, best_epoch = miou, epoch
            log_rows.append({"epoch": epoch, "step": step, "train_loss": round(train_loss, 6),
                             "val_miou": miou, "best": best_epoch == epoch, "seconds": round(seconds, 2)})
            # The log and weights first, state.pt last: it is what a resume trusts.
            _write_log(out / "log.jsonl", log_rows)
            save_checkpoint(model, out / "last.safetensors", entry, config["init"])
            if best_epoch == epoch or miou is None:
                save_checkpoint(model, out / "best.safetensors", entry, config["init"])
            state = {
                "format": STATE_FORMAT, "epoch": epoch, "step": step, "steps_per_epoch": steps_per_epoch,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "best_miou": best_miou,
                "best_epoch": best_epoch, "rng": rng_state(),
            }
            with atomic_path(out / "state.pt") as tmp:
                torch.save(state, tmp)
            shown = "n/a" if miou is None else f"{miou:.2f}"
            best = "n/a" if best_miou is None else f"{best_miou:.2f} (epoch {best_epoch})"
            print(f"epoch {epoch}/{epochs}: train loss {train_loss:.4f}, val mIoU {shown}, best {best}, "
                  f"{seconds:.0f}s train", flush=True)
        dist.barrier()
        summary.update(epochs=epoch, train_loss=train_loss)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    if dist.is_main:
        print(f"best: {out / 'best.safetensors'}")
    summary.update(best_miou=best_miou, best_epoch=best_epoch)
    return summary


# Command line ------------------------------------------------------------------------------------

def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path,
                   help="VOCdevkit/VOC2012-style folder, or a folder with images/ + masks/")
    p.add_argument("--train-split", help="training split (default train)")
    p.add_argument("--val-split", help="validation split, evaluated after each epoch (default val)")
    p.add_argument("--init", help=f"zoo model to start from (default {DEFAULT_INIT})")
    p.add_argument("--classes", help="class names 'background,person' (VOC labels are remapped to them) "
                                     "or a count N (labels already 0..N-1); default: the init model's")
    p.add_argument("--label-map", choices=["auto", "voc", "none"],
                   help="voc: VOC labels -> index in --classes, other classes -> 0; none: labels as they "
                        "are; auto (default): voc for a VOCdevkit folder with VOC class names")
    p.add_argument("--epochs", type=int, help="epochs (default 10)")
    p.add_argument("--batch-size", type=int, help="global batch, split across DDP processes (default 8)")
    p.add_argument("--crop", type=int, help="random crop size (default 513)")
    p.add_argument("--lr", type=float, help="base learning rate, poly decay (default 1e-4)")
    p.add_argument("--weight-decay", type=float, help="on conv weights (default 4e-5)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    p.add_argument("--seed", type=int,
                   help="seed for the data order, augmentation and new layers (default 0)")
    p.add_argument("--max-steps", type=int, help="at most N steps per epoch (quick runs)")
    p.add_argument("--val-limit", type=int, help="validate on the first N images of the val split only")
    p.add_argument("--out", type=Path, help="run folder (default runs/<init>-<time>)")
    p.add_argument("--resume", type=Path, metavar="RUNDIR",
                   help="continue the run in RUNDIR from its last finished epoch")
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default 0)")
    p.add_argument("--baseline", action="store_true",
                   help="first evaluate the init model itself on the (remapped) val split")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--stop-after-epoch", type=int, help=argparse.SUPPRESS)  # simulates an interruption


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `edgeseg train` on the CLI's subparsers."""
    p = subparsers.add_parser("train", help="fine-tune a zoo model on a dataset (DeepLab recipe)",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args: argparse.Namespace) -> None:
    if args.workers < 0:
        raise EdgesegError("--workers must be 0 or more")
    dist = init_distributed()
    try:
        config, resuming = resolve_config(args)
        # Every rank must write into the same folder (the default name has a timestamp).
        config["out"] = dist.broadcast(config["out"])
        run_training(config, resume=resuming, dist=dist, workers=args.workers, progress=not args.no_progress,
                     stop_after_epoch=args.stop_after_epoch, baseline=args.baseline)
    finally:
        close_distributed(dist)


def main(argv: list[str] | None = None) -> int:
    """`python -m edgeseg.train ...`: the same as `edgeseg train ...`."""
    from edgeseg.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
