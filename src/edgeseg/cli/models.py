"""`edgeseg models`: the zoo's entries and whether their weights are present."""

from __future__ import annotations

import argparse

from edgeseg.cli.options import add_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "models", "list zoo models and whether their weights are present")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. '*dm05*'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from edgeseg.zoo.registry import get_entry, list_models
    from edgeseg.zoo.weights import local_weights

    print(f"{'name':<36} {'classes':>7} {'published mIoU fp32/int8':>25}  weights")
    for name in list_models(args.pattern):
        entry = get_entry(name)
        local = local_weights(entry.weights)
        if entry.weights.bundled:
            where = f"shipped with edgeseg ({local})" if local else "missing from this install (reinstall edgeseg)"
        else:
            where = f"present ({local})" if local else f"not downloaded ({entry.weights.url})"
        published = f"{entry.published.get('miou_fp32', '-')}/{entry.published.get('miou_int8', '-')}"
        print(f"{name:<36} {entry.num_classes:>7} {published:>25}  {where}")
        print(f"{'':<36} recipe: {entry.recipe}{_recorded_run(entry.recipe_name)}")


def _recorded_run(recipe_name: str | None) -> str:
    """For an entry trained by a shipped recipe: what the recipe's recorded run gave and took."""
    from edgeseg.training.recipes import load_recipe

    if recipe_name is None:
        return ""
    result = load_recipe(recipe_name).result
    if "val_miou" not in result:
        return ""
    return (f" ({result['epochs']} epochs: val mIoU {result['val_miou']:.2f}, "
            f"{result['wall_clock']} on {result['machine']})")
