"""Fine-tuning (`edgeseg train`): DeepLab's recipe on any VOCdevkit or images/ + masks/ dataset.

One job per module: `config` (the typed TrainConfig), `data` (checks, augmentation, batch order),
`batchnorm` (batch norm in for training, folded out for checkpoints), `loop` (the training loop),
`distributed` (torchrun setup), `checkpoints` (run folder files), `validation` (sharded val, baseline),
`command` (the `edgeseg train` options). Nothing here imports the CLI.
"""

import importlib

# Imported on first use: the CLI builds its `train` parser from this package, and `edgeseg predict` must not
# pay for importing torch.
_LAZY = {
    "fold_batchnorm": "batchnorm", "insert_batchnorm": "batchnorm", "add_train_parser": "command",
    "cmd_train": "command", "main": "command", "TrainConfig": "config", "resolve_classes": "config",
    "EpochBatches": "data", "TrainCrops": "data", "augment": "data", "run_training": "loop",
    "evaluate_remapped_pretrained": "validation",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'edgeseg.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgeseg.training.{_LAZY[name]}"), name)


__all__ = ["EpochBatches", "TrainConfig", "TrainCrops", "add_train_parser", "augment", "cmd_train",
           "evaluate_remapped_pretrained", "fold_batchnorm", "insert_batchnorm", "main", "resolve_classes",
           "run_training"]
