"""`edgeseg evaluate`: mIoU over a split, one confusion matrix."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeseg.cli.options import add_command, add_data_arg, add_model_args, open_model, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "evaluate", "VOC mIoU over a split (one confusion matrix, 255 ignored)")
    add_data_arg(p, "dataset: a VOCdevkit/VOC2012-style folder, a folder with images/ + masks/, or one with "
                    "<split>/images/ + <split>/masks/", required=True, old=("--voc-root",))
    p.add_argument("--split", default="val", help="split to evaluate")
    add_model_args(p)
    p.add_argument("--limit", type=positive_int, metavar="N", default=None, help="only the first N images of the split")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images/masks with a warning")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the metrics as JSON")
    p.add_argument("--class-map", metavar="NAME|FILE.json",
                   help="score the model's classes as the dataset's through a mapping, e.g. cityscapes-to-camvid")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from edgeseg.data.datasets import check_model_classes, open_dataset, remap_for
    from edgeseg.data.labelsets import MappedRuntime, load_mapping, mapping_lut
    from edgeseg.evaluation.evaluate import evaluate, format_table
    from edgeseg.io.files import check_output_file, write_json

    if args.json:
        check_output_file(args.json)  # before the work, not after
    dataset = open_dataset(args.data, args.split, args.limit, allow_missing=args.skip_bad)
    mapping = load_mapping(args.class_map) if args.class_map else None
    opened = open_model(args)
    runtime, class_names = opened.runtime, opened.class_names
    if mapping is not None:  # score the model's classes as the dataset's
        runtime = MappedRuntime(runtime, mapping_lut(mapping, class_names), len(mapping.dataset_classes))
        class_names = mapping.dataset_classes
    else:
        check_model_classes(class_names, args.data)
        dataset = remap_for(dataset, class_names, args.data)
    result = evaluate(runtime, dataset, class_names, skip_bad=args.skip_bad)
    print(f"{opened.description} on {dataset.description}")
    print(format_table(result))
    if args.json:
        write_json(args.json, {"model": opened.description, "data": dataset.description, **result.to_dict()})
