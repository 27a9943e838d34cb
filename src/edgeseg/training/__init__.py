"""Fine-tuning (`edgeseg train`): DeepLab's recipe on any VOCdevkit or images/ + masks/ dataset.

One job per module: `config` (the typed TrainConfig), `data` (checks, augmentation, batch order),
`batchnorm` (batch norm in for training, folded out for checkpoints), `loop` (the training loop),
`distributed` (torchrun setup), `checkpoints` (run folder files), `validation` (sharded val, baseline),
`command` (the `edgeseg train` options). Nothing here imports the CLI.
"""

from edgeseg.training.batchnorm import fold_batchnorm, insert_batchnorm
from edgeseg.training.command import add_train_parser, cmd_train, main
from edgeseg.training.config import TrainConfig, resolve_classes
from edgeseg.training.data import EpochBatches, TrainCrops, augment
from edgeseg.training.loop import run_training
from edgeseg.training.validation import evaluate_remapped_pretrained

__all__ = ["EpochBatches", "TrainConfig", "TrainCrops", "add_train_parser", "augment", "cmd_train",
           "evaluate_remapped_pretrained", "fold_batchnorm", "insert_batchnorm", "main", "resolve_classes",
           "run_training"]
