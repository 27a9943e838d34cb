"""The training configuration: a typed object, its defaults, checks, and config.json."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from edgeseg.checks import parse_size
from edgeseg.data.datasets import predicts_classes, resolve_label_map
from edgeseg.data.voc import MAX_CLASSES
from edgeseg.errors import EdgesegError
from edgeseg.pipeline import input_hw
from edgeseg.zoo.registry import Preprocess

DEFAULT_INIT = "deeplabv3_mnv2_dm05_voc"
BN_MODES = ("auto", "frozen", "train")
# `--bn auto`, resolved when a run starts (config.json records the choice): a run whose init model already
# predicts its classes (its own, or VOC's merged) keeps batch norm frozen, as a 40-step VOC fine-tune of the VOC
# model lost 11 points with batch statistics from 4 crops even at lr 1e-4, and 29 from 8 crops at lr 0.007;
# a run learning new classes trains the statistics from BN_TRAIN_BATCH images per process up, as the domain
# moves (3 CamVid epochs from the VOC model at lr 0.007: 43.66 with them, 41.71 frozen at batch 4; 40.92 and
# 41.89 at batch 2; bench/new_classes_batches.py). docs/training.md.
BN_TRAIN_BATCH = 4
# Default learning rates, by what the run does, whatever the batch norm: a run on the classes the init model
# already predicts is a fine-tune, at DeepLabv3's frozen-statistics rate 0.001 (which the frozen layers' row norm,
# batchnorm.FROZEN_ROW_NORM, makes safe); a run learning new classes trains at DeepLab's 0.007 (3 CamVid epochs
# from the VOC model at batch 2 with frozen statistics: 41.89 at 0.007, 34.92 at 0.001). docs/training.md.
LR_FINE_TUNE = 0.001
LR_NEW_CLASSES = 0.007
# Options a resumed run may change.
RESUME_OVERRIDES = ("epochs",)
# Loss weights per class: none, or median frequency balancing (Eigen & Fergus 2015, SegNet's CamVid recipe):
# rare classes (poles, signs, cyclists) weigh more, so they are not given up for the large ones.
CLASS_WEIGHT_MODES = ("none", "median-frequency")
# Options added after runs were saved without them, with the value those runs used.
LEGACY_DEFAULTS = {"class_weights": "none", "input_size": "513", "upscale": False, "teacher": "",
                   "teacher_input_size": "", "distill_weight": 1.0, "recipe": "", "merge_head": False}


@dataclass
class TrainConfig:
    """What shapes a run; saved as RUNDIR/config.json (all but `out`) and read back on --resume."""

    data: str
    out: str = ""
    train_split: str = "train"
    val_split: str = "val"
    init: str = DEFAULT_INIT
    classes: str = ""  # comma-separated names; "" means the init model's
    label_map: str = "auto"
    epochs: int = 10
    batch_size: int = 8
    crop: int = 513
    lr: float | None = None  # None: LR_FINE_TUNE or LR_NEW_CLASSES, by whether the init model knows the classes
    weight_decay: float = 4e-5
    momentum: float = 0.9
    seed: int = 0
    max_steps: int | None = None
    val_limit: int | None = None
    bn: str = "auto"
    class_weights: str = "none"
    # The deployed input (N or HxW): validation and checkpoints use it. With `upscale`, frames smaller than it
    # are enlarged to fit it, in training (before the random scale) and wherever the checkpoint runs.
    input_size: str = "513"
    upscale: bool = False
    # Distillation (training/distill.py): a model whose soft labels join the loss, its input, their weight.
    teacher: str = ""
    teacher_input_size: str = ""  # "": the teacher's own
    distill_weight: float = 1.0
    # The shipped recipe this run follows (training/recipes.py): a resume goes on with its later stages.
    recipe: str = ""
    # When --classes merges the VOC init model's classes (background,person): keep its classifier whole and
    # take each class's maximum over its rows, so the run starts at the init model's remapped predictions.
    merge_head: bool = True

    def preprocess_for(self, base: Preprocess) -> Preprocess:
        """Returns the init model's preprocessing with this run's input size and upscale."""
        return dataclasses.replace(base, input_size=parse_size(str(self.input_size)), upscale=self.upscale)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.classes.split(","))

    def bn_frozen(self, world: int = 1) -> bool:
        """Whether batch norm stays fixed: `--bn frozen`, or (runs saved before auto was resolved at the start)
        auto with small per-process batches."""
        return self.bn == "frozen" or (self.bn == "auto" and self.batch_size // world < BN_TRAIN_BATCH)

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "out"}

    @classmethod
    def from_json(cls, data: dict, out: str) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}, out=out)


def option_names() -> tuple[str, ...]:
    """The config fields that are also `edgeseg train` options."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "out")


def resolve_classes(spec: str | None, init: str) -> tuple[str, ...]:
    """Returns the class names that `--classes` names: a comma-separated list, or a count N."""
    from edgeseg.zoo.build import init_entry

    entry = init_entry(init)
    if spec is None or not str(spec).strip():
        return entry.class_names
    spec = str(spec).strip()
    if re.fullmatch(r"[+-]?\d+(\.\d*)?|[+-]?\.\d+", spec) and not spec.isdigit():
        raise EdgesegError(f"--classes {spec}: a class count is a whole number (or give names: 'background,cat')")
    if spec.isdigit():
        n = int(spec)
        if n < 2:
            raise EdgesegError(f"--classes {spec}: need at least 2 classes")
        if n > MAX_CLASSES:
            raise EdgesegError(f"--classes {spec}: at most {MAX_CLASSES} classes (label 255 means ignore, and labels "
                               "are stored in 8 bits)")
        return entry.class_names if n == entry.num_classes else tuple(f"class_{i}" for i in range(n))
    names = tuple(name.strip() for name in spec.split(","))
    if any(not name for name in names):
        raise EdgesegError(f"--classes {spec!r}: empty class name")
    if len(set(names)) != len(names):
        raise EdgesegError(f"--classes {spec!r}: a class is named twice")
    if len(names) < 2:
        raise EdgesegError(f"--classes {spec!r}: need at least 2 classes")
    if len(names) > MAX_CLASSES:
        raise EdgesegError(f"--classes: {len(names)} names, at most {MAX_CLASSES} classes (label 255 means ignore)")
    return names


def _normalized(key: str, value: object, init: str) -> object:
    from edgeseg.zoo.build import is_checkpoint

    if value is None:
        return None
    if key == "data" or (key in ("init", "teacher") and is_checkpoint(str(value))):
        return str(Path(str(value)).resolve())
    if key == "classes":
        return ",".join(resolve_classes(str(value), init))
    if key == "input_size" or (key == "teacher_input_size" and value):
        return parse_size(str(value))
    return value


def _option(key: str) -> str:
    return "--" + key.replace("_", "-")


def resume_config(run_dir: Path, given: dict, out: Path | None) -> TrainConfig:
    """Returns the config of the run in `run_dir`; options in `given` must match it (except --epochs)."""
    config_path = run_dir / "config.json"
    if not (run_dir / "state.pt").is_file() or not config_path.is_file():
        raise EdgesegError(f"--resume {run_dir}: no run to resume (needs config.json and state.pt there)")
    if out is not None and Path(out).resolve() != run_dir.resolve():
        raise EdgesegError("--resume continues in its own folder; drop -o/--output")
    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise EdgesegError(f"{config_path}: cannot read ({exc})") from None
    if not isinstance(saved, dict):
        raise EdgesegError(f"{config_path}: expected a JSON object, got {type(saved).__name__}")
    saved = {**LEGACY_DEFAULTS, **saved}
    missing = [name for name in option_names() if name not in saved]
    if missing:  # a default could differ from what the run used: resuming would not continue it
        raise EdgesegError(f"{config_path}: lacks {', '.join(missing)}; not a config.json written by edgeseg train")
    config = TrainConfig.from_json(saved, str(run_dir.resolve()))
    try:
        check_config(config)
    except EdgesegError as exc:
        raise EdgesegError(f"{config_path}: {exc}") from None
    for key, value in given.items():
        if key in RESUME_OVERRIDES or (key == "bn" and value == "auto"):  # auto was resolved when the run began
            continue
        if _normalized(key, value, config.init) != _normalized(key, getattr(config, key), config.init):
            raise EdgesegError(f"{_option(key)} {value} differs from the run being resumed "
                               f"({getattr(config, key)}); only --epochs can change")
    if "epochs" in given:
        config.epochs = given["epochs"]
        check_config(config)
    return config


def new_config(given: dict, out: Path | None, world: int = 1) -> TrainConfig:
    """Returns the config of a new run: the options given, defaults for the rest, checked."""
    if given.get("data") is None:
        raise EdgesegError("--data DIR is required (or --resume RUNDIR)")
    data = Path(given["data"])
    if not data.is_dir():
        raise EdgesegError(f"{data}: no such folder")
    config = TrainConfig(**{**given, "data": str(data.resolve()), "classes": ""})
    _inherit_input_handling(config, given)
    names = resolve_classes(given.get("classes"), config.init)
    config.classes = ",".join(names)
    config.label_map = resolve_label_map(config.label_map, names, data)
    _check_teacher(config, given)
    _check_merged_init(config, given)
    # A class count names no classes: its labels may mean anything.
    keeps = keeps_init_classes(config) and not str(given.get("classes") or "").strip().isdigit()
    if config.bn == "auto":
        config.bn = "frozen" if keeps or config.batch_size // world < BN_TRAIN_BATCH else "train"
    if config.lr is None:
        config.lr = LR_FINE_TUNE if keeps else LR_NEW_CLASSES
    check_config(config)
    if not (data / "ImageSets").is_dir() and not (data / config.train_split / "images").is_dir():
        # One images/ + masks/ pair would train and validate on the same images.
        raise EdgesegError(f"{data}: one images/ + masks/ pair has no separate val split; use "
                           f"{data}/train/{{images,masks}} and {data}/val/{{images,masks}}")
    default = Path("runs", f"{_init_label(config.init)}-{time.strftime('%Y%m%d-%H%M%S')}")
    config.out = str((Path(out) if out is not None else default).resolve())
    return config


def keeps_init_classes(config: TrainConfig) -> bool:
    """Whether the init model already predicts the run's classes: its own, or VOC's merged into them."""
    from edgeseg.zoo.build import init_entry

    return predicts_classes(init_entry(config.init).class_names, config.class_names, config.label_map)


def _check_merged_init(config: TrainConfig, given: dict) -> None:
    """A merged-head checkpoint (its head keeps VOC's rows) fine-tunes only for its own classes, merged."""
    from edgeseg.zoo.build import checkpoint_class_groups, init_entry, is_checkpoint, merged_checkpoint_error

    if not is_checkpoint(config.init):
        return
    entry = init_entry(config.init)
    if checkpoint_class_groups(Path(config.init), entry.num_classes) is None:
        return
    if config.class_names != entry.class_names:
        raise merged_checkpoint_error(config.init, entry.class_names)
    if given.get("merge_head") is False:
        raise EdgesegError(f"--no-merge-head: {config.init} keeps VOC's classifier rows and merges them; it "
                           "fine-tunes only with its merged head")


def _check_teacher(config: TrainConfig, given: dict) -> None:
    """A missing teacher, or one whose classes do not map onto the run's, fails now, not after the data checks."""
    from edgeseg.training.distill import teacher_class_map
    from edgeseg.zoo.build import init_entry, is_checkpoint

    if not config.teacher:
        if "distill_weight" in given:
            raise EdgesegError("--distill-weight needs --teacher")
        return
    if is_checkpoint(config.teacher):  # a resume from another folder still finds it
        config.teacher = str(Path(config.teacher).resolve())
    try:
        entry = init_entry(config.teacher)
    except EdgesegError as exc:
        raise EdgesegError(f"--teacher: {exc}") from None
    teacher_class_map(config.teacher, entry.class_names, config.class_names, config.label_map)


def _inherit_input_handling(config: TrainConfig, given: dict) -> None:
    """A run from a checkpoint keeps the input size and upscale it was trained for, unless given."""
    from edgeseg.zoo.build import init_entry, is_checkpoint

    if not is_checkpoint(config.init):
        return
    config.init = str(Path(config.init).resolve())  # a resume from another folder still finds it
    preprocess = init_entry(config.init).preprocess
    if "input_size" not in given:
        config.input_size = "x".join(map(str, input_hw(preprocess.input_size)))
    if "upscale" not in given:
        config.upscale = preprocess.upscale


def _init_label(init: str) -> str:
    """A zoo name as it is; a checkpoint as <its run folder>-<its name>, e.g. camvid-best."""
    from edgeseg.zoo.build import is_checkpoint

    if not is_checkpoint(init):
        return init
    path = Path(init)
    return "-".join(part for part in (path.parent.name, path.stem) if part)


# Ranges of the numeric options, named in the errors. Integers: inclusive.
INT_RANGES = {"epochs": (1, 10_000), "batch_size": (1, 4096), "crop": (33, 2049), "seed": (0, 2**64 - 1),
              "max_steps": (1, 10**9), "val_limit": (1, 10**9)}
# Floats, finite only: (low, high, low included, high included).
FLOAT_RANGES = {"lr": (0.0, 10.0, False, True), "momentum": (0.0, 1.0, True, False),
                "weight_decay": (0.0, 1.0, True, True), "distill_weight": (0.0, 100.0, False, True)}


def _interval(low: float, high: float, low_in: bool, high_in: bool) -> str:
    return f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def check_config(config: TrainConfig) -> None:
    """Raises one line for a value no run can use: every number finite and in its range, the range named."""
    import math

    for key, (low, high) in INT_RANGES.items():
        value = getattr(config, key)
        if value is None and key in ("max_steps", "val_limit"):
            continue
        where = f"{low}..{high}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise EdgesegError(f"{_option(key)} must be a whole number in {where}, got {value!r}")
        if value < low:
            raise EdgesegError(f"{_option(key)} must be {low} or more ({where}), got {value}")
        if value > high:
            raise EdgesegError(f"{_option(key)} must be at most {high} ({where}), got {value}")
    for key, (low, high, low_in, high_in) in FLOAT_RANGES.items():
        value = getattr(config, key)
        where = _interval(low, high, low_in, high_in)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise EdgesegError(f"{_option(key)} must be a finite number in {where}, got {value!r}")
        if value < low or (value == low and not low_in):
            raise EdgesegError(f"{_option(key)} must be {low:g} or more {where}, got {value:g}" if low_in else
                               f"{_option(key)} must be more than {low:g} {where}, got {value:g}")
        if value > high or (value == high and not high_in):
            raise EdgesegError(f"{_option(key)} must be at most {high:g} {where}, got {value:g}" if high_in else
                               f"{_option(key)} must be below {high:g} {where}, got {value:g}")
    if config.bn not in BN_MODES:
        raise EdgesegError(f"--bn {config.bn}: expected one of {', '.join(BN_MODES)}")
    try:
        height, width = parse_size(str(config.input_size))
    except EdgesegError as exc:
        raise EdgesegError(f"--input-size: {exc}") from None
    config.input_size = str(height) if height == width else f"{height}x{width}"  # one spelling in config.json
    for flag in ("upscale", "merge_head"):
        if not isinstance(getattr(config, flag), bool):
            raise EdgesegError(f"{flag} must be true or false, got {getattr(config, flag)!r}")
    if config.class_weights not in CLASS_WEIGHT_MODES:
        raise EdgesegError(f"--class-weights {config.class_weights}: expected one of {', '.join(CLASS_WEIGHT_MODES)}")
    if config.teacher_input_size:
        if not config.teacher:
            raise EdgesegError("--teacher-input-size needs --teacher")
        try:
            height, width = parse_size(str(config.teacher_input_size))
        except EdgesegError as exc:
            raise EdgesegError(f"--teacher-input-size: {exc}") from None
        config.teacher_input_size = str(height) if height == width else f"{height}x{width}"
