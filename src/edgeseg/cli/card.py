"""`edgeseg card`: every figure of the model card, measured."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeseg.cli.options import add_command, add_data_arg, add_source_args, load_torch_model, positive_int, threads_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "card", "measure and write the model card (mIoU FP32/INT8, OPS, params, sizes)")
    add_data_arg(p, "evaluation data: a VOCdevkit folder, or images/ + masks/ (as for evaluate)", required=True,
                 old=("--voc-root",))
    p.add_argument("--split", default="val", help="split of --data to evaluate")
    add_source_args(p, tflite=False, model_help="a zoo model, or a wildcard such as '*camvid*' (default: every zoo "
                                                "entry whose classes are the data's)")
    p.add_argument("-o", "--output", type=Path, metavar="DIR", default=Path("card_out"),
                   help="folder for card, exports, charts")
    add_data_arg(p, "calibration data: a folder of images, or a dataset whose train split is used "
                    "(default: --data, train split)", flag="--calib-data", old=("--calib-voc-root",))
    p.add_argument("--calib-count", type=positive_int, metavar="N", default=64,
                   help="calibration images per INT8 export")
    p.add_argument("--threads", type=threads_int, metavar="N", default=None,
                   help="LiteRT CPU threads for the evaluations (default: LiteRT's, as in evaluate)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="only the first N evaluation images")
    p.add_argument("--reuse-exports", action="store_true", help="reuse .tflite files already in the folder")
    p.add_argument("--class-map", metavar="NAME|FILE.json",
                   help="score the models' classes as the data's, e.g. cityscapes-to-camvid")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from edgeseg.data.datasets import open_dataset, open_images, remap_for
    from edgeseg.evaluation.card import CardModel, measure, plot_charts, scores_on, write_card
    from edgeseg.io.files import ensure_writable_dir
    from edgeseg.zoo.build import has_official_tflite, official_tflite
    from edgeseg.zoo.registry import get_entry

    out_dir = ensure_writable_dir(args.output)
    dataset = open_dataset(args.data, args.split, args.limit)
    calib_root = args.calib_data or args.data
    open_images(calib_root, "train", args.calib_count)  # calibration data, checked before any work
    if args.weights is not None:
        model, entry = load_torch_model(args)
        items = [CardModel(entry, model)]
        dataset = remap_for(dataset, entry.class_names, args.data)
    else:
        names = _card_models(args.model, lambda name: scores_on(get_entry(name), args.class_map))
        items = []
        for name in names:
            model, entry = load_torch_model(argparse.Namespace(model=name, weights=None))
            # Entries edgeseg trained have no official file to compare with; their exports are the whole story.
            items.append(CardModel(entry, model, official_tflite(name) if has_official_tflite(name) else None))
    if args.class_map:  # a bad map fails now, not after minutes of exports
        from edgeseg.data.labelsets import load_mapping, mapping_lut

        mapping = load_mapping(args.class_map)
        for item in items:
            mapping_lut(mapping, item.entry.class_names)
    data = f"{dataset.description}, {len(dataset)} images"
    facts = []
    for item in items:
        fact = measure(item, dataset, out_dir, calib_root=calib_root,
                       calib_count=args.calib_count, threads=args.threads, reuse_exports=args.reuse_exports,
                       class_map=args.class_map)
        facts.append(fact)
        for path in plot_charts(item.entry, fact, out_dir):
            print(f"wrote {path}", file=sys.stderr)
    path = write_card([item.entry for item in items], facts, data, out_dir)
    print(path.read_text())


def _card_models(pattern: str | None, fits) -> list[str]:
    """The zoo entries a card covers: those `pattern` names (a name or a wildcard), else every one that `fits`."""
    from edgeseg.errors import EdgesegError
    from edgeseg.zoo.registry import get_entry, list_models

    if pattern is None:
        return [name for name in list_models() if fits(name)]
    if not any(c in pattern for c in "*?["):
        return [get_entry(pattern).name]
    names = list_models(pattern)
    if not names:
        raise EdgesegError(f"--model {pattern!r} matches no zoo model; known models: {', '.join(list_models())}")
    return names
