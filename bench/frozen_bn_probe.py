"""Why frozen batch norm collapsed a fine-tune: the frozen layers' row norm R, and which parameters train.

With frozen statistics a step of lr on a conv's rescaled rows W_n = W_fold / s (s = |row| / R) moves the folded
row by lr * s^2 times its gradient, so R sets every channel's step; the affine (scale, shift) steps in output
units whatever R is. Each setting below fine-tunes the VOC dm 0.5 model on VOC train for --steps steps
(batch 4, crop 321, as `edgeseg train` does with --bn frozen) after re-parametrizing the frozen layers to row
norm R (the same function), with or without the affine training, and scores the VOC val images.

    EDGESEG_MIRROR=../shared/models .venv/bin/python bench/frozen_bn_probe.py --json docs/frozen_bn_probe.json
    # 9 settings, 5-9 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import re
import tempfile
from pathlib import Path

import torch
from _results import write_record

from edgeseg.training.batchnorm import ConvBNAct
from edgeseg.training.config import new_config
from edgeseg.training.distributed import Dist
from edgeseg.training.loop import (
    Progress,
    _prepare,
    _train_epoch,
    _validate,
    build_model,
    build_optimizer,
    seed_everything,
)

VOC = Path(__file__).resolve().parents[2] / "shared" / "voc" / "VOC2012"
# What trains: conv weights and the classifier only (frozen affine, today's --bn frozen), or the affine too.
TRAINED = {"conv": r"conv\.weight|classifier", "affine": r""}


@torch.no_grad()
def set_row_norm(model: torch.nn.Module, row_norm: float) -> None:
    """Re-parametrizes every frozen ConvBNAct to rows of norm `row_norm`; the function stays the same."""
    for layer in (m for m in model.modules() if isinstance(m, ConvBNAct)):
        weight, _ = layer.folded()
        scale = layer.bn.weight / torch.sqrt(layer.bn.running_var + layer.bn.eps)
        norm = weight.flatten(1).norm(dim=1)
        new_scale = torch.where(norm > 0, norm / row_norm, torch.ones_like(norm))
        k = scale / new_scale
        layer.conv.weight.mul_(k.reshape(-1, 1, 1, 1))
        layer.bn.running_mean.mul_(k)
        layer.bn.running_var.mul_(k * k)
        layer.bn.weight.copy_(new_scale * torch.sqrt(layer.bn.running_var + layer.bn.eps))


def probe(row_norm: float, lr: float, trained: str, steps: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as hold:
        config = new_config({"data": str(VOC), "batch_size": batch, "crop": 321, "lr": lr, "bn": "frozen",
                             "max_steps": steps, "epochs": 1}, Path(tmp, "run"))
        run = _prepare(config, resume=False, dist=Dist(), progress=False, baseline=False, hold=hold)
        seed_everything(config.seed, "cpu")
        model = build_model(run, measure=True)
        set_row_norm(model, row_norm)
        for name, param in model.named_parameters():
            param.requires_grad_(bool(re.search(TRAINED[trained], name)))
        optimizer, scheduler = build_optimizer(model, config, run.total_steps)
        _train_epoch(run, model, optimizer, scheduler, 1, Progress(), 0)
        return _validate(run, model, "probe")[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="1.414:0.001:conv,10:0.001:conv,20:0.001:conv,40:0.001:conv,"
                                              "10:0.007:conv,20:0.007:conv,40:0.007:conv,20:0.001:affine,"
                                              "20:0.007:affine",
                        help="comma-separated R:LR:TRAINED, TRAINED being conv (conv weights and classifier) or "
                             "affine (those and batch norm's scale and shift)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--json", type=Path, help="write the results here (e.g. docs/frozen_bn_probe.json)")
    args = parser.parse_args()
    print("| row norm R | lr | trained | val mIoU |\n| --- | --- | --- | --- |")
    rows = []
    for setting in args.settings.split(","):
        row_norm, lr, trained = setting.split(":")
        miou = probe(float(row_norm), float(lr), trained, args.steps, args.batch)
        print(f"| {float(row_norm):g} | {float(lr):g} | {trained} | {miou:.2f} |", flush=True)
        rows.append({"row_norm": float(row_norm), "lr": float(lr), "trained": trained, "val_miou": round(miou, 4)})
    if args.json:
        options = {"settings": args.settings, "steps": args.steps, "batch": args.batch}
        write_record(args.json, "frozen_bn_probe.py", options, init="deeplabv3_mnv2_dm05_voc", steps=args.steps,
                     batch=args.batch, crop=321, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
