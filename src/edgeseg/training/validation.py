"""Validation during training, spread across DDP ranks, and the pretrained model remapped as a baseline.

Each rank evaluates every world-th val image and the confusion matrices are summed (as torchvision's
reference does), so a large val set does not leave the other ranks waiting at a barrier for rank 0.
"""

from __future__ import annotations

import copy
from pathlib import Path

from edgeseg.data.datasets import RemappedDataset, label_lut, open_dataset, resolve_label_map
from edgeseg.data.labelsets import MappedRuntime
from edgeseg.data.voc import VOC_CLASSES
from edgeseg.errors import EdgesegError
from edgeseg.evaluation.evaluate import evaluate
from edgeseg.evaluation.metrics import ConfusionMatrix
from edgeseg.pipeline import Runtime
from edgeseg.training.distributed import Dist
from edgeseg.zoo.registry import Preprocess


def validate(runtime: Runtime, dataset: RemappedDataset, names: tuple[str, ...], dist: Dist, *,
             progress: bool = False) -> ConfusionMatrix:
    """Returns the confusion matrix of `runtime` over the whole dataset, each rank taking its share."""
    shard = copy.copy(dataset)
    shard.samples = dataset.samples[dist.rank::dist.world]
    if shard.samples:
        confusion = evaluate(runtime, shard, names, progress=progress and dist.is_main).confusion
    else:  # more ranks than val images: this one adds nothing, but must still join the sum
        confusion = ConfusionMatrix(len(names))
    confusion.matrix = dist.all_sum_array(confusion.matrix)
    return confusion


def remapped_pretrained_runtime(init: str, names: tuple[str, ...], data: str | Path,
                                device: str = "cpu", preprocess: Preprocess | None = None) -> MappedRuntime:
    """Returns zoo model (or checkpoint) `init` as a runtime whose VOC predictions are remapped to `names`,
    run with `preprocess` (default: the init's own input handling)."""
    from edgeseg.runtimes.torch import TorchRuntime
    from edgeseg.zoo.build import init_entry, init_model

    entry = init_entry(init)
    if entry.class_names != VOC_CLASSES:
        raise EdgesegError(f"{init}: not a VOC model, cannot remap its predictions to {','.join(names)}")
    resolve_label_map("voc", names, Path(data))  # checks the names
    runtime = TorchRuntime(init_model(init), num_classes=entry.num_classes, device=device,
                           name=f"torch:{entry.name}", preprocess=preprocess or entry.preprocess)
    return MappedRuntime(runtime, label_lut("voc", names), len(names))


def evaluate_remapped_pretrained(init: str, data: str | Path, split: str, classes: str | tuple[str, ...], *,
                                 limit: int | None = None, progress: bool = True, device: str = "cpu"):
    """Returns the EvalResult of zoo model `init` on a remapped task, e.g. person vs rest.

    Its VOC predictions and the VOC masks both go through the same table (listed classes -> their
    index in `classes`, all others -> 0), so the number is comparable with a fine-tuned model's.
    """
    names = tuple(classes.split(",")) if isinstance(classes, str) else tuple(classes)
    runtime = remapped_pretrained_runtime(init, names, data, device)
    dataset = RemappedDataset(open_dataset(data, split), runtime.lut, names, limit)
    return evaluate(runtime, dataset, names, progress=progress)
