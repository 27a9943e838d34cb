"""The training loop: DeepLab's recipe with batch norm restored, exact resume, DDP.

Recipe: SGD with momentum, poly learning rate (power 0.9, torch's PolynomialLR, stepped per batch),
weight decay on conv weights only, cross-entropy on logits upsampled to the crop (255 ignored), val
mIoU after every epoch. `--batch-size` is the global batch: under torchrun each of the W processes
takes every W-th sample of it, and the loss is normalised by the global count of labelled pixels, so
a DDP run computes the same updates as one process (up to float summation order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeseg.data.datasets import RemappedDataset, class_groups, label_lut, open_dataset, predicts_classes
from edgeseg.data.labelsets import source_classes
from edgeseg.data.voc import IGNORE_INDEX, VOC_CLASSES
from edgeseg.errors import EdgesegError, warn
from edgeseg.io.files import ensure_writable_dir
from edgeseg.models.deeplabv3 import ClassGroups
from edgeseg.training.batchnorm import fold_batchnorm, insert_batchnorm
from edgeseg.training.checkpoints import (
    FROZEN_AFFINE_FORMAT,
    load_state,
    read_log,
    rng_state,
    run_folder_lock,
    save_state,
    set_rng_state,
    write_json,
    write_log,
)
from edgeseg.training.config import TrainConfig
from edgeseg.training.data import (
    EpochBatches,
    TrainCrops,
    calibration_batches,
    median_frequency_weights,
    validate_dataset,
)
from edgeseg.training.distill import CACHE_NAME, SoftLabels, distillation_sum, teacher_targets
from edgeseg.training.distributed import Dist
from edgeseg.training.validation import remapped_pretrained_runtime, validate
from edgeseg.zoo.build import init_entry, init_model, is_checkpoint, zoo_base
from edgeseg.zoo.registry import ModelEntry

POLY_POWER = 0.9

# The run's report (epochs, best checkpoint, baseline): `edgeseg train` shows it on stdout; a Python caller
# configures the logger as it likes (nothing is printed unless it does).
REPORT = logging.getLogger("edgeseg.training")


@dataclass
class Progress:
    """Where a run stands after its last finished epoch."""

    epoch: int = 0
    step: int = 0
    best_miou: float | None = None
    best_epoch: int | None = None
    log: list[dict] = field(default_factory=list)


@dataclass
class Run:
    """Everything one training run works with."""

    config: TrainConfig
    dist: Dist
    out: Path
    entry: ModelEntry
    train_set: RemappedDataset
    val_set: RemappedDataset
    steps_per_epoch: int
    show: bool
    base: str  # the zoo entry under the init model, recorded in checkpoints
    start: str  # the weights the model is built from: the init, or on resume the run's own last checkpoint
    loss_weights: torch.Tensor | None = None
    teacher: SoftLabels | list[torch.Tensor] | None = None  # soft labels per training sample (--teacher)
    baseline: bool = False  # evaluate the init model first (a new run only)
    class_groups: ClassGroups | None = None  # the init classifier's rows each class merges

    @property
    def names(self) -> tuple[str, ...]:
        return self.config.class_names

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch


def seed_everything(seed: int, device: str) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.startswith("cuda"):
        # The bilinear upsampling backward has no deterministic CUDA kernel, so only cuDNN is pinned.
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(True)
        # CPU kernels are deterministic already; NaN-filling every new tensor cost ~20% of a step.
        torch.utils.deterministic.fill_uninitialized_memory = False
    # Subnormal floats (tiny gradients) run many times slower on x86 CPUs.
    torch.set_flush_denormal(True)


def run_training(config: TrainConfig, *, resume: bool = False, dist: Dist | None = None, workers: int = 0,
                 progress: bool = True, stop_after_epoch: int | None = None, baseline: bool | None = None) -> dict:
    """Trains (or continues) the run described by `config`; returns a summary dict.

    `baseline`: first evaluate the init model itself on the run's classes. None (the default) does so when the run
    keeps the init model's classes or merges VOC's (the fine-tunes that can forget), so that an epoch far below
    it is reported at once (`forgetting_warning`)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        with contextlib.ExitStack() as hold:
            run = _prepare(config, resume=resume, dist=dist or Dist(), progress=progress, baseline=baseline,
                           hold=hold)
            return _train(run, resume=resume, workers=workers, stop_after_epoch=stop_after_epoch)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def _prepare(config: TrainConfig, *, resume: bool, dist: Dist, progress: bool, baseline: bool | None,
             hold: contextlib.ExitStack) -> Run:
    """Checks the data in full and the run folder, before any training; the main process locks the run folder
    for as long as `hold` is open."""
    names = config.class_names
    lut = label_lut(config.label_map, names)
    source_labels = len(VOC_CLASSES) if lut is not None else len(names)
    out = Path(config.out)
    # state.pt restores every weight on resume, so a run started from a checkpoint rebuilds from its own
    # last one: the init file may have moved since.
    start = str(out / "last.safetensors") if resume and is_checkpoint(config.init) else config.init
    base_entry = init_entry(start)
    show = progress and dist.is_main
    train_set = RemappedDataset(open_dataset(config.data, config.train_split), lut, names)
    val_set = RemappedDataset(open_dataset(config.data, config.val_split), lut, names, config.val_limit)
    validate_dataset(train_set, source_labels, progress=show)
    validate_dataset(val_set, source_labels, progress=show)
    if config.batch_size % dist.world:
        raise EdgesegError(f"--batch-size {config.batch_size} is the global batch; "
                           f"it must divide among {dist.world} processes")
    steps_per_epoch = len(train_set) // config.batch_size
    if steps_per_epoch == 0:
        raise EdgesegError(f"{train_set.description}: {len(train_set)} images, "
                           f"fewer than --batch-size {config.batch_size}")
    if config.max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps)
    if baseline is None:
        baseline = predicts_classes(base_entry.class_names, names, config.label_map)
    if baseline and lut is None and set(source_classes(base_entry.class_names, names)) != set(names):
        raise EdgesegError("--baseline needs --classes that the init model's classes map onto")
    if baseline and lut is not None and base_entry.class_names not in (VOC_CLASSES, names):
        raise EdgesegError(f"--baseline: {config.init} predicts neither VOC's classes nor --classes, so its "
                           "predictions cannot be scored on these labels")
    if dist.is_main:
        ensure_writable_dir(out)
        hold.enter_context(run_folder_lock(out))
        _check_run_folder(out, resume)
    dist.barrier()
    entry = dataclasses.replace(base_entry, class_names=names, preprocess=config.preprocess_for(base_entry.preprocess))
    groups = class_groups(lut, base_entry.class_names, names) if config.merge_head else None
    return Run(config, dist, out, entry, train_set, val_set, steps_per_epoch, show, zoo_base(start), start,
               _loss_weights(config, train_set, dist.is_main), _teacher(config, train_set, out, dist, show),
               baseline=baseline, class_groups=groups)


def _check_run_folder(out: Path, resume: bool) -> None:
    """A new run needs a folder without a run in it (config.json is written before the first step)."""
    if resume:
        return
    if (out / "state.pt").exists():
        raise EdgesegError(f"{out} already holds a run; resume it with --resume {out}, or pick another -o/--output")
    if (out / "config.json").exists():
        raise EdgesegError(f"{out} holds a run that stopped before its first checkpoint (config.json, no state.pt); "
                           "delete the folder or pick another -o/--output")


def _loss_weights(config: TrainConfig, train_set: RemappedDataset, show: bool) -> torch.Tensor | None:
    if config.class_weights == "none":
        return None
    weights = median_frequency_weights(train_set, len(config.class_names))
    if show:
        shown = ", ".join(f"{name} {w:.2f}" for name, w in zip(config.class_names, weights))
        REPORT.info(f"class weights ({config.class_weights}): {shown}")
    return torch.from_numpy(weights)


def _teacher(config: TrainConfig, train_set: RemappedDataset, out: Path, dist: Dist,
             show: bool) -> SoftLabels | list[torch.Tensor] | None:
    """The teacher's soft labels: computed once by rank 0 (on its device) into the run folder, then read by
    every rank. The other ranks wait at a barrier meanwhile (gloo's default timeout is 30 minutes)."""
    if not config.teacher:
        return None
    cache = out / CACHE_NAME
    args = (config.teacher, config.teacher_input_size, train_set, config.class_names, config.label_map)
    if dist.is_main:
        targets = teacher_targets(*args, cache, device=dist.device, progress=show)
    dist.barrier()
    return targets if dist.is_main else teacher_targets(*args, cache)


def build_model(run: Run, *, measure: bool) -> torch.nn.Module:
    """Returns the init model with batch norm inserted (statistics measured on training crops if `measure`)."""
    config = run.config
    model = init_model(run.start, class_names=run.names, class_groups=run.class_groups)
    batches = calibration_batches(TrainCrops(run.train_set, config.crop, config.seed, run.entry.preprocess),
                                  config.batch_size) if measure else []
    insert_batchnorm(model, batches, frozen=config.bn_frozen(run.dist.world))
    # Channels-last runs the depthwise and 1x1 convs faster on CPUs (and GPUs).
    return model.to(run.dist.device, memory_format=torch.channels_last).train()


def build_optimizer(model: torch.nn.Module, config: TrainConfig,
                    total_steps: int) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.PolynomialLR]:
    """SGD with weight decay on conv weights only (not batch norm, not biases), poly decay per step."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, momentum=config.momentum,
    )
    return optimizer, torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_steps, power=POLY_POWER)


def _resume(run: Run, model: torch.nn.Module, optimizer: torch.optim.SGD,
            scheduler: torch.optim.lr_scheduler.PolynomialLR) -> Progress:
    state = load_state(run.out / "state.pt", torch.device(run.dist.device))
    if state["format"] < FROZEN_AFFINE_FORMAT and run.config.bn_frozen(run.dist.world):
        raise EdgesegError(f"{run.out}: this run froze batch norm under an earlier edgeseg, whose frozen layers still "
                           "trained their scale and shift; it cannot continue as it began (resume it with that "
                           "edgeseg, or start a new run)")
    if state["steps_per_epoch"] != run.steps_per_epoch:
        raise EdgesegError(f"{run.out}: the data now gives {run.steps_per_epoch} steps per epoch, "
                           f"the run had {state['steps_per_epoch']}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scheduler.total_iters != run.total_steps:
        # --epochs changed: the same poly curve, stretched to the new length from this step on.
        scheduler.total_iters = run.total_steps
        for group, lr in zip(optimizer.param_groups, scheduler._get_closed_form_lr()):
            group["lr"] = lr
    set_rng_state(state["rng"])
    log = [row for row in read_log(run.out / "log.jsonl") if row["epoch"] <= state["epoch"]]
    return Progress(state["epoch"], state["step"], state["best_miou"], state["best_epoch"], log)


def _train(run: Run, *, resume: bool, workers: int, stop_after_epoch: int | None) -> dict:
    config, dist = run.config, run.dist
    seed_everything(config.seed, dist.device)
    model = build_model(run, measure=not resume)
    optimizer, scheduler = build_optimizer(model, config, run.total_steps)
    progress = Progress()
    if resume:
        progress = _resume(run, model, optimizer, scheduler)
        if progress.epoch >= config.epochs:
            if dist.is_main:
                REPORT.info(f"{run.out}: already trained {progress.epoch} epochs; pass --epochs N "
                            f"(> {progress.epoch}) to train further")
            return {"out": str(run.out), "epochs": progress.epoch, "best_miou": progress.best_miou,
                    "best_epoch": progress.best_epoch}
    elif dist.is_main:
        write_json(run.out / "config.json", config.to_json())

    if run.baseline and not resume:
        progress.log.append(_baseline(run, model))

    ddp_model = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model, device_ids=[dist.local_rank] if "cuda" in dist.device else None)

    summary: dict = {"out": str(run.out)}
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        start = time.perf_counter()
        train_loss = _train_epoch(run, ddp_model, optimizer, scheduler, epoch, progress, workers)
        _end_epoch(run, model, optimizer, scheduler, epoch, progress, train_loss, time.perf_counter() - start)
        summary.update(epochs=epoch, train_loss=train_loss)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    if dist.is_main:
        REPORT.info(f"best: {run.out / 'best.safetensors'}")
    summary.update(best_miou=progress.best_miou, best_epoch=progress.best_epoch)
    return summary


def _train_epoch(run: Run, model: torch.nn.Module, optimizer: torch.optim.SGD,
                 scheduler: torch.optim.lr_scheduler.PolynomialLR, epoch: int, progress: Progress,
                 workers: int) -> float:
    from tqdm import tqdm

    config, dist = run.config, run.dist
    device = torch.device(dist.device)
    sampler = EpochBatches(len(run.train_set), config.batch_size, run.steps_per_epoch, config.seed, epoch,
                           dist.rank, dist.world)
    # Worker processes augment the next batches while this one trains; the result does not depend on them.
    crops = TrainCrops(run.train_set, config.crop, config.seed, run.entry.preprocess, run.teacher)
    loader = torch.utils.data.DataLoader(crops, batch_sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", unit="step", disable=not run.show, file=sys.stderr)
    losses = []
    weights = None if run.loss_weights is None else run.loss_weights.to(device)
    for pixels, labels, *soft in bar:
        pixels = pixels.to(device, non_blocking=True, memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler's record lags a stretch)
        # Normalise by the labelled pixels of the whole global batch, so DDP's gradient average
        # equals the single-process gradient.
        (labelled,) = dist.all_sum([float((labels != IGNORE_INDEX).sum())])
        logits = model(pixels)
        loss_sum = F.cross_entropy(logits, labels, weight=weights, ignore_index=IGNORE_INDEX, reduction="sum")
        if soft:
            teacher = soft[0].to(device, non_blocking=True)
            loss_sum = loss_sum + config.distill_weight * distillation_sum(logits, teacher, labels)
        loss = loss_sum * (dist.world / max(labelled, 1.0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        progress.step += 1
        (global_loss,) = dist.all_sum([float(loss_sum.detach()) / max(labelled, 1.0)])
        if not math.isfinite(global_loss):
            raise EdgesegError(f"epoch {epoch}, step {progress.step}: loss is {global_loss}; "
                               f"{_last_good(run, progress)}; try a lower --lr")
        losses.append(global_loss)
        progress.log.append({"epoch": epoch, "step": progress.step, "loss": round(global_loss, 6), "lr": lr})
        bar.set_postfix(loss=f"{global_loss:.4f}", lr=f"{lr:.2e}")
    bar.close()
    return float(np.mean(losses))


def _validate(run: Run, model: torch.nn.Module, name: str) -> tuple[float | None, list[float | None]]:
    """Returns (val mIoU in %, per-class IoU in %) of the folded model, every rank taking a share."""
    from edgeseg.runtimes.torch import TorchRuntime

    if len(run.val_set) == 0:
        return None, []
    runtime = TorchRuntime(fold_batchnorm(model), num_classes=len(run.names), device=run.dist.device, name=name,
                           preprocess=run.entry.preprocess)
    confusion = validate(runtime, run.val_set, run.names, run.dist, progress=run.show)
    return round(100 * confusion.miou(), 4), confusion.iou_percent()


def _baseline(run: Run, model: torch.nn.Module) -> dict:
    """Evaluates the init model as it is (remapped to the run's classes if needed); returns the log row."""
    config = run.config
    if config.label_map == "voc" and init_entry(config.init).class_names != run.names:
        runtime = remapped_pretrained_runtime(config.init, run.names, config.data, run.dist.device,
                                              preprocess=run.entry.preprocess)
        confusion = validate(runtime, run.val_set, run.names, run.dist, progress=run.show)
        miou = round(100 * confusion.miou(), 4)
    else:
        miou, _ = _validate(run, model, f"{config.init} (pretrained)")
    if run.dist.is_main:
        REPORT.info(f"baseline: {config.init} as is, {config.classes}: val mIoU {miou:.2f}")
    return {"epoch": 0, "step": 0, "baseline_miou": miou}


# An epoch this far below the init model's own figure (points, and share of it) is forgetting, not noise.
FORGETTING_POINTS, FORGETTING_SHARE = 8.0, 0.12


def forgetting_warning(config: TrainConfig, log: list[dict], epoch: int, miou: float | None,
                       world: int = 1) -> str | None:
    """Warns (and returns the message) when the first epochs' val mIoU falls far below the baseline in `log`:
    the run is losing what the init model knew, most often from a learning rate made for training from scratch."""
    baseline = next((row["baseline_miou"] for row in log if "baseline_miou" in row), None)
    if miou is None or baseline is None or epoch > 2:
        return None
    drop = baseline - miou
    if drop < max(FORGETTING_POINTS, FORGETTING_SHARE * baseline):
        return None
    if config.bn_frozen(world):
        cause = (f"--lr {config.lr:g} is too high for a trained model at batch {config.batch_size}; stop and try a "
                 "rate 3-10x lower")
    else:
        cause = (f"batch norm statistics from {config.batch_size // world} images per process (--bn train) drift "
                 "from what whole frames need; stop and try --bn frozen")
    message = (f"epoch {epoch}: val mIoU {miou:.2f} is {drop:.1f} points below the init model's {baseline:.2f}: the "
               f"fine-tune is forgetting what {config.init} knew. Likely cause: {cause}")
    warn(message)
    return message


def first_non_finite(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> str | None:
    """Returns the name of the first model tensor (or optimizer state) holding NaN or infinity, else None."""
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    if optimizer is not None:
        for group_state in optimizer.state.values():
            for key, value in group_state.items():
                if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    return f"optimizer {key}"
    return None


def _last_good(run: Run, progress: Progress) -> str:
    if progress.epoch == 0:
        return "no epoch finished with finite weights, so none was saved"
    return f"the last good epoch is {progress.epoch} ({run.out / 'last.safetensors'}, --resume continues from it)"


def _end_epoch(run: Run, model: torch.nn.Module, optimizer: torch.optim.SGD,
               scheduler: torch.optim.lr_scheduler.PolynomialLR, epoch: int, progress: Progress,
               train_loss: float, seconds: float) -> None:
    """Validates, then (rank 0) writes the log, the folded checkpoints and state.pt, in that order.
    Non-finite weights are never written: the run stops first, naming the last good epoch."""
    from edgeseg.zoo.build import save_checkpoint

    bad = first_non_finite(model, optimizer)
    if bad is not None:
        raise EdgesegError(f"epoch {epoch}: {bad} is not finite (NaN or infinity), nothing saved for this epoch; "
                           f"{_last_good(run, progress)}; try a lower --lr")
    miou, ious = _validate(run, model, f"epoch {epoch}")
    model.train()
    improved = miou is not None and (progress.best_miou is None or miou > progress.best_miou)
    if improved or (miou is None and progress.best_miou is None):  # no val images: the last epoch is "best"
        progress.best_miou, progress.best_epoch = miou, epoch
    progress.epoch = epoch
    if run.dist.is_main:
        forgetting_warning(run.config, progress.log, epoch, miou, run.dist.world)
    progress.log.append({"epoch": epoch, "step": progress.step, "train_loss": round(train_loss, 6),
                         "val_miou": miou, "val_iou": dict(zip(run.names, ious)),
                         "best": progress.best_epoch == epoch, "seconds": round(seconds, 2)})
    if run.dist.is_main:
        out, init = run.out, run.base
        # The log and weights first, state.pt last: it is what a resume trusts.
        write_log(out / "log.jsonl", progress.log)
        folded = fold_batchnorm(model)
        save_checkpoint(folded, out / "last.safetensors", run.entry, init)
        if progress.best_epoch == epoch:
            save_checkpoint(folded, out / "best.safetensors", run.entry, init)
        save_state(out / "state.pt", {
            "epoch": epoch, "step": progress.step, "steps_per_epoch": run.steps_per_epoch,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "best_miou": progress.best_miou, "best_epoch": progress.best_epoch, "rng": rng_state(),
        })
        shown = "n/a" if miou is None else f"{miou:.2f}"
        best = "n/a" if progress.best_miou is None else f"{progress.best_miou:.2f} (epoch {progress.best_epoch})"
        REPORT.info(f"epoch {epoch}/{run.config.epochs}: train loss {train_loss:.4f}, val mIoU {shown}, best {best}, "
                    f"{seconds:.0f}s train")
    run.dist.barrier()
