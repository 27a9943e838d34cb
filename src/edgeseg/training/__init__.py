"""Fine-tuning (`edgeseg train`): DeepLab's recipe on any VOCdevkit or images/ + masks/ dataset.

One job per module: `config` (the typed TrainConfig), `data` (checks, augmentation, batch order),
`batchnorm` (batch norm in for training, folded out for checkpoints), `distill` (a teacher's soft labels),
`loop` (the training loop), `distributed` (torchrun setup), `checkpoints` (run folder files), `validation`
(sharded val, baseline), `recipes` (the shipped recipe files behind `--recipe`), `command` (the `edgeseg train`
options). Nothing here imports the CLI.
"""

from __future__ import annotations

import importlib

# Loaded on first use: the CLI registers `train` through `command`, and building its parser must not
# import torch (a 5-10 s import on a small machine).
_EXPORTS = {
    "fold_batchnorm": "batchnorm", "insert_batchnorm": "batchnorm",
    "add_train_parser": "command", "cmd_train": "command", "main": "command",
    "TrainConfig": "config", "resolve_classes": "config",
    "EpochBatches": "data", "TrainCrops": "data", "augment": "data",
    "run_training": "loop",
    "evaluate_remapped_pretrained": "validation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
