"""Recipes: the exact training behind each zoo entry edgeseg trained, kept as files beside its weights.

A recipe (`zoo/trained/NAME.recipe.json`) holds every `edgeseg train` option but the data folder, and the
schedule as stages: `"epochs": [10, 16, 24]` trains 10 epochs, then stretches the poly decay to 16 from where
it stopped (as `--resume RUNDIR --epochs 16` does), then to 24. `edgeseg train --recipe NAME --data DIR` runs
them all; `--resume RUNDIR` of such a run finishes the stage it was in and goes on with the rest. The file also
records what the run gave (`result`), so a rerun can be compared with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.zoo.registry import TRAINED_DIR

RECIPE_SUFFIX = ".recipe.json"
# What a recipe fixes and a user cannot change beside it (the run folder, loader workers and progress bars
# change nothing in the result).
FIXED_BY_RECIPE = ("train_split", "val_split", "init", "classes", "label_map", "epochs", "batch_size", "crop",
                   "lr", "bn", "class_weights", "input_size", "upscale", "teacher", "teacher_input_size",
                   "distill_weight", "weight_decay", "momentum", "seed", "max_steps", "val_limit", "merge_head")


@dataclass(frozen=True)
class Recipe:
    """One recipe file: the options of every stage, the epochs each stage ends at, what it expects and gave."""

    name: str
    options: dict  # TrainConfig fields, without data, out and epochs
    stages: tuple[int, ...]  # the epoch each stage ends at, increasing
    data: str  # the data it was run on, in words
    result: dict = field(default_factory=dict)  # recorded: val mIoU, best epoch, wall time

    @property
    def path(self) -> Path:
        return recipe_path(self.name)


def recipe_path(name: str) -> Path:
    return TRAINED_DIR / f"{name}{RECIPE_SUFFIX}"


def known_recipes() -> list[str]:
    """The names of the recipes shipped with edgeseg (one per trained zoo entry)."""
    return sorted(path.name[: -len(RECIPE_SUFFIX)] for path in TRAINED_DIR.glob(f"*{RECIPE_SUFFIX}"))


def load_recipe(name: str) -> Recipe:
    """Returns the recipe called `name`, or a one-line error listing the known ones (or naming the damage)."""
    path = recipe_path(name)
    if "/" in name or "\\" in name or not path.is_file():
        raise EdgesegError(f"unknown recipe {name!r}; known recipes: {', '.join(known_recipes()) or 'none'}")
    try:
        raw = json.loads(path.read_text())
        options, stages = dict(raw["options"]), tuple(int(e) for e in raw["epochs"])
        recipe = Recipe(name, options, stages, str(raw.get("data", "")), dict(raw.get("result", {})))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgesegError(f"{path}: not a readable recipe ({type(exc).__name__}: {exc})") from None
    unknown = sorted(set(options) - set(FIXED_BY_RECIPE))
    if unknown or "epochs" in options:
        raise EdgesegError(f"{path}: options {', '.join(unknown or ['epochs'])} have no place in a recipe's options")
    if not stages or any(b <= a for a, b in zip(stages, stages[1:])):
        raise EdgesegError(f"{path}: epochs must be one or more increasing stage ends, got {list(stages)}")
    return recipe


def check_no_overrides(given: dict) -> None:
    """A recipe fixes every option that shapes the result: giving one beside it is an error, not a silent mix."""
    clash = [key for key in FIXED_BY_RECIPE if key in given]
    if clash:
        flags = ", ".join("--" + key.replace("_", "-") for key in clash)
        raise EdgesegError(f"--recipe sets every training option; drop {flags} (or train without --recipe)")


def epochs_done(run_dir: Path) -> int:
    """The last epoch the run in `run_dir` finished (0 if none)."""
    from edgeseg.training.checkpoints import read_log

    return max((int(row["epoch"]) for row in read_log(run_dir / "log.jsonl") if "val_miou" in row), default=0)


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"

