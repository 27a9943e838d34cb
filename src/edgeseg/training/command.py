"""`edgeseg train`: its options, and `python -m edgeseg.training` (the same command on its own)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.training.config import (
    BN_MODES,
    BN_TRAIN_BATCH,
    CLASS_WEIGHT_MODES,
    DEFAULT_INIT,
    LR_FINE_TUNE,
    LR_NEW_CLASSES,
    new_config,
    option_names,
    resume_config,
)

DESCRIPTION = """Fine-tune a zoo model on a VOCdevkit or images/ + masks/ dataset, with DeepLab's recipe.

Recipe: random scale 0.5-2.0, pad with the mean pixel (label 255), random crop, horizontal flip;
x*2/255-1; batch norm put back into the convs for training and folded out again for checkpoints;
SGD with momentum 0.9, poly learning rate (power 0.9), weight decay on conv weights; cross-entropy
on logits upsampled to the crop, label 255 ignored. Validation mIoU after each epoch.

Run folder: config.json, log.jsonl, last.safetensors, best.safetensors (best val mIoU; loads with
`--weights` like any zoo model), state.pt (model, optimizer, scheduler, step, RNG; `--resume RUNDIR`
continues exactly as if the run had not stopped), teacher.safetensors (with --teacher: its soft labels).
"""


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path,
                   help="VOCdevkit/VOC2012-style folder, or a folder with images/ + masks/")
    p.add_argument("--recipe", metavar="ENTRY",
                   help="train as the zoo entry ENTRY was trained: every option from its recipe file (see "
                        "`edgeseg models`), with --data and -o your own; prints the wall time at the end")
    p.add_argument("--train-split", help="training split (default train)")
    p.add_argument("--val-split", help="validation split, evaluated after each epoch (default val)")
    p.add_argument("--init", help=f"zoo model to start from (default {DEFAULT_INIT}), or a checkpoint "
                                  "(.safetensors of an earlier run; its input size and upscale carry over)")
    p.add_argument("--classes", help="class names 'background,person' (VOC labels are remapped to them) "
                                     "or a count N (labels already 0..N-1); default: the init model's")
    p.add_argument("--label-map", choices=["auto", "voc", "none"],
                   help="voc: VOC labels -> index in --classes, other classes -> 0; none: labels as they "
                        "are; auto (default): voc for a VOCdevkit folder with VOC class names")
    p.add_argument("--epochs", type=int, help="epochs (default 10)")
    p.add_argument("--batch-size", type=int, help="global batch, split across DDP processes (default 8)")
    p.add_argument("--crop", type=int, help="random crop size (default 513)")
    p.add_argument("--lr", type=float, help=f"base learning rate, poly decay (default {LR_FINE_TUNE} when the init "
                                            "model already predicts the run's classes, a fine-tune; "
                                            f"{LR_NEW_CLASSES} for new classes)")
    p.add_argument("--bn", choices=BN_MODES,
                   help="batch norm while training: train (batch statistics), frozen (the statistics "
                        "measured at the start, and scale and shift, stay fixed), "
                        "auto (default): frozen when the init model already predicts the run's classes (its "
                        f"own named, or VOC's merged; a class count names none), else train from {BN_TRAIN_BATCH} "
                        "images per process up")
    p.add_argument("--class-weights", choices=CLASS_WEIGHT_MODES,
                   help="loss weight per class: none (default), or median-frequency (rare classes weigh "
                        "more; weights from the training masks, printed at the start)")
    p.add_argument("--input-size", metavar="N|HxW",
                   help="the input the model is deployed at: validation and exports use it (default 513)")
    p.add_argument("--upscale", action=argparse.BooleanOptionalAction, default=None,
                   help="enlarge frames smaller than --input-size to fit it, in training and wherever the "
                        "checkpoint runs (small frames, e.g. 480x360 road scenes: small objects grow); "
                        "default off, or as the --init checkpoint was trained")
    p.add_argument("--merge-head", action=argparse.BooleanOptionalAction, default=None,
                   help="when --classes merges the VOC init model's classes (e.g. background,person), keep its "
                        "21 classifier rows and score each class by the maximum of its rows, so the run starts "
                        "at the init model's remapped predictions (default on)")
    p.add_argument("--teacher", metavar="MODEL",
                   help="distil from this zoo model or checkpoint: its soft labels (computed once per training "
                        "frame, cached in the run folder) join the loss; its classes must be the run's, or VOC's "
                        "with --label-map voc")
    p.add_argument("--teacher-input-size", metavar="N|HxW",
                   help="run the teacher at this input (default: its own input size and upscale)")
    p.add_argument("--distill-weight", type=float,
                   help="weight of KL(teacher || student) per labelled pixel, added to the cross-entropy "
                        "(default 1)")
    p.add_argument("--weight-decay", type=float, help="on conv weights (default 4e-5)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    p.add_argument("--seed", type=int,
                   help="seed for the data order, augmentation and new layers (default 0)")
    p.add_argument("--max-steps", type=int, help="at most N steps per epoch (quick runs)")
    p.add_argument("--val-limit", "--limit", dest="val_limit", type=int,
                   help="validate on the first N images of the val split only (--limit, as in evaluate and card)")
    p.add_argument("-o", "--output", "--out", dest="out", type=Path,
                   help="run folder (default runs/<init>-<time>, for a checkpoint runs/<its folder>-<its "
                        "name>-<time>); --out is the older spelling")
    p.add_argument("--resume", type=Path, metavar="RUNDIR",
                   help="continue the run in RUNDIR from its last finished epoch")
    p.add_argument("--workers", type=int, default=1,
                   help="data loader processes augmenting ahead of the step (default 1; 0: in the loop)")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                   help="first evaluate the init model itself on the (remapped) val split; default: when the run "
                        "keeps its classes or merges VOC's, so that an epoch far below it is warned about at once")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--stop-after-epoch", type=int, help=argparse.SUPPRESS)  # simulates an interruption


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers `edgeseg train` on the CLI's subparsers."""
    p = subparsers.add_parser("train", help="fine-tune a zoo model on a dataset (DeepLab recipe)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=cmd_train)
    return p


class _Stdout(logging.Handler):
    """Writes each record to the current sys.stdout (replaced by tests and IDEs after import)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), flush=True)


def _report_on_stdout() -> None:
    """The training loop reports through the `edgeseg.training` logger; the command shows it on stdout."""
    report = logging.getLogger("edgeseg.training")
    if not any(isinstance(h, _Stdout) for h in report.handlers):
        report.addHandler(_Stdout())
    report.setLevel(logging.INFO)
    report.propagate = False


def cmd_train(args: argparse.Namespace) -> None:
    """Runs `edgeseg train` (under torchrun too: every rank calls this)."""
    from edgeseg.training.distributed import close_distributed, init_distributed
    from edgeseg.training.loop import run_training

    _report_on_stdout()
    if not 0 <= args.workers <= 64:
        raise EdgesegError(f"--workers must be a whole number in 0..64, got {args.workers}")
    given = {k: getattr(args, k) for k in option_names() if getattr(args, k, None) is not None}
    recipe = _recipe_of(args, given)
    started = time.perf_counter()
    dist = init_distributed()
    try:
        if args.resume is not None:
            config = resume_config(Path(args.resume), given, args.out)
            if config.recipe and "epochs" not in given:  # with --epochs N the user takes over
                from edgeseg.training.recipes import load_recipe

                recipe = load_recipe(config.recipe)
                _resume_in_stage(config, recipe.stages)
        else:
            config = new_config(given, args.out, dist.world)
        # Every rank must write into the same folder (the default name has a timestamp).
        config.out = dist.broadcast(config.out)
        options = {"dist": dist, "workers": args.workers, "progress": not args.no_progress,
                   "stop_after_epoch": args.stop_after_epoch}
        summary = run_training(config, resume=args.resume is not None, baseline=args.baseline, **options)
        if recipe is not None:
            summary = _later_stages(config, recipe.stages, summary, options)
            if dist.is_main:
                _report_recipe(recipe, summary, time.perf_counter() - started)
    finally:
        close_distributed(dist)


def _recipe_of(args: argparse.Namespace, given: dict):
    """The recipe named by --recipe, its options put into `given` (which may hold no other training option)."""
    if args.recipe is None:
        return None
    from edgeseg.training.recipes import check_no_overrides, load_recipe

    if args.resume is not None:
        raise EdgesegError("--resume continues a recipe run by itself; drop --recipe")
    recipe = load_recipe(args.recipe)
    check_no_overrides({k: v for k, v in given.items() if k not in ("data", "recipe")})
    given.update(recipe.options, epochs=recipe.stages[0], recipe=recipe.name)
    return recipe


def _resume_in_stage(config, stages: tuple[int, ...]) -> None:
    """A recipe run resumes within the stage it stopped in (config.json keeps the first stage's end)."""
    from edgeseg.training.recipes import epochs_done

    done = epochs_done(Path(config.out))
    config.epochs = next((end for end in stages if end > done), stages[-1])


def _later_stages(config, stages: tuple[int, ...], summary: dict, options: dict) -> dict:
    """Runs the recipe's stages after the one just trained, each stretching the poly decay to its end (as
    `--resume RUNDIR --epochs N` does). A stopped run (`stop_after_epoch`) goes no further."""
    from edgeseg.training.loop import run_training
    from edgeseg.training.recipes import epochs_done

    out = Path(config.out)
    for end in stages:
        done = epochs_done(out)
        stopped = options["stop_after_epoch"] is not None and done >= options["stop_after_epoch"]
        if end <= done or stopped:
            continue
        stage = resume_config(out, {"epochs": end}, None)
        summary = run_training(stage, resume=True, **options)
    return summary


def _report_recipe(recipe, summary: dict, seconds: float) -> None:
    from edgeseg.training.recipes import format_duration

    recorded = recipe.result
    best = summary.get("best_miou")
    shown = "n/a" if best is None else f"{best:.2f} (epoch {summary.get('best_epoch')})"
    was = f"; the recipe recorded {recorded['val_miou']:.2f}" if "val_miou" in recorded else ""
    logging.getLogger("edgeseg.training").info(
        f"recipe {recipe.name}: {summary.get('epochs')} epochs, best val mIoU {shown}{was}; "
        f"{format_duration(seconds)} wall clock")


def main(argv: list[str] | None = None) -> int:
    """`python -m edgeseg.training ...`: `edgeseg train ...` on its own, with the same one-line errors."""
    parser = argparse.ArgumentParser(prog="edgeseg train", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from edgeseg.logs import warnings_as_lines

    try:
        with warnings_as_lines():
            cmd_train(args)
    except EdgesegError as exc:
        print(f"edgeseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeseg: interrupted", file=sys.stderr)
        return 130
    return 0
