"""The model card: every number measured from edgeseg's own exported files, on named data.

For each model: count params and OPS from the torch model, export FP32, INT8 per-channel (CPUs, GPUs),
INT8 per-tensor (`--target imx8mp`, NPUs) and i.MX 93 (`--target imx93`) .tflite files, evaluate them (and
the official INT8 file, for reference) on the given split, check the per-tensor file's ops against the
i.MX 8M Plus VX delegate's documented list, compile the i.MX 93 file and the official one with Vela for the
NPU's estimated cost, and draw per-class IoU and confusion charts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.data.datasets import SegmentationFolder
from edgeseg.data.labelsets import MappedRuntime, load_mapping, mapping_lut
from edgeseg.deploy.export import ExportOptions, export_tflite, inspect_tflite
from edgeseg.deploy.targets import VX_DELEGATE_SOURCE, unsupported_ops
from edgeseg.deploy.vela import IMX93_OPTIONS, VELA_VERSION, compile_for_ethos_u, compiled_path, vela_available
from edgeseg.errors import warn
from edgeseg.evaluation.complexity import count_ops, count_params
from edgeseg.evaluation.evaluate import EvalResult, evaluate
from edgeseg.io.files import atomic_path, write_json
from edgeseg.pipeline import input_hw
from edgeseg.runtimes.factory import open_runtime
from edgeseg.zoo.build import qat_ranges_file
from edgeseg.zoo.registry import ModelEntry

COLUMNS = ("Model", "Architecture", "Backbone", "Training Dataset", "mIoU FP32", "mIoU INT8", "Input size",
           "OPS", "Params", "FP32 Size", "INT8 Size", "i.MX 93 NPU (Vela estimate)", "Compatibility")


@dataclass
class CardModel:
    """What the card needs about one model: its entry, its torch module, and its official file if any."""

    entry: ModelEntry
    model: object
    official_tflite: Path | None = None


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f} MB"


def measure(
    item: CardModel, dataset: SegmentationFolder, out_dir: Path, *, calib_root: Path, calib_count: int = 64,
    threads: int | None = 2, reuse_exports: bool = False, class_map: str | None = None,
) -> dict:
    """Returns the measured card facts for one model, exporting its .tflite files into out_dir.

    With `class_map` (a mapping name or file), the model's predictions are scored as the dataset's classes.
    """
    entry = item.entry
    size = entry.preprocess.input_size
    ops = count_ops(item.model, size)
    files = {"fp32": out_dir / f"{entry.name}_fp32.tflite", "int8": out_dir / f"{entry.name}_int8.tflite",
             "int8_per_tensor": out_dir / f"{entry.name}_imx8mp.tflite",
             "imx93": out_dir / f"{entry.name}_imx93.tflite"}
    frames = {"input_size": size, "upscale": entry.preprocess.upscale}
    calibrated = {**frames, "calib_root": calib_root, "calib_count": calib_count}
    qat_file = qat_ranges_file(entry.name) if item.official_tflite is not None else None
    variants = {"fp32": ExportOptions(precision="fp32", **frames),
                "int8": ExportOptions(precision="int8", **calibrated),
                "int8_per_tensor": ExportOptions(target="imx8mp", qat_file=qat_file, **calibrated),
                "imx93": ExportOptions(target="imx93", qat_file=qat_file, **calibrated)}
    if not vela_available():
        warn("Vela is not installed (pip install 'edgeseg[npu]'): no i.MX 93 file or estimate")
        del files["imx93"]
    vela: dict[str, dict] = {}  # Vela's estimates, from the export that compiled the file where there was one
    for key, path in files.items():
        if not (reuse_exports and path.is_file() and (key != "imx93" or compiled_path(path).is_file())):
            report = export_tflite(item.model, entry.class_names, path, variants[key])
            if "vela" in report:
                vela[key] = report["vela"]
    class_names, wrap = entry.class_names, (lambda runtime: runtime)
    if class_map is not None:
        mapping = load_mapping(class_map)
        lut, class_names = mapping_lut(mapping, entry.class_names), mapping.dataset_classes

        def wrap(runtime):
            return MappedRuntime(runtime, lut, len(class_names))
    if item.official_tflite is not None:
        files["official_int8"] = item.official_tflite
    results: dict[str, EvalResult] = {
        key: evaluate(wrap(open_runtime(path, "litert", threads=threads)), dataset, class_names)
        for key, path in files.items()}
    return _facts(item, ops, files, results, class_names, calib_count, reuse_exports, class_map, vela)


def _facts(item: CardModel, ops, files: dict[str, Path], results: dict[str, EvalResult],
           class_names: tuple[str, ...], calib_count: int, reuse_exports: bool, class_map: str | None,
           vela: dict[str, dict]) -> dict:
    """The card's facts for one model, from its files and their evaluations."""
    entry = item.entry
    int8_report, npu_report = inspect_tflite(files["int8"]), inspect_tflite(files["int8_per_tensor"])
    # Vela is deterministic: a reused file (or the official one) compiled again gives the estimate it had.
    vela = {key: vela.get(key) or compile_for_ethos_u(files[key]).as_dict()
            for key in ("imx93", "official_int8") if key in files}
    return {
        "name": entry.name,
        "params": count_params(item.model),
        "ops": ops.to_dict(),
        "fp32_bytes": files["fp32"].stat().st_size,
        "int8_bytes": files["int8"].stat().st_size,
        "int8_per_tensor_bytes": files["int8_per_tensor"].stat().st_size,
        "miou": {k: round(100 * r.miou, 2) for k, r in results.items()},
        "per_class_iou": {k: r.confusion.iou_percent() for k, r in results.items()},
        "int8_confusion": results["int8"].confusion.matrix.tolist(),
        "int8_ops": int8_report["ops"],
        "int8_float_compute_ops": int8_report["float_compute_ops"] + npu_report["float_compute_ops"],
        "int8_per_tensor_ops": npu_report["ops"],
        "vx_unsupported_ops": unsupported_ops(npu_report["ops"]),
        "vela": vela,
        "imx93_output": inspect_tflite(files["imx93"])["output"]["shape"] if "imx93" in files else None,
        "calibration": {"split": "train", "count": calib_count, "reused_exports": reuse_exports},
        "files": {k: str(v) for k, v in files.items()},
        "class_names": list(class_names),
        "class_map": class_map,
    }


def card_row(entry: ModelEntry, facts: dict) -> list[str]:
    unsupported = facts["vx_unsupported_ops"]
    vx = (f"i.MX 8M Plus NPU (VX delegate): the per-tensor file's {len(facts['int8_per_tensor_ops'])} op types "
          "are all on its documented list" if not unsupported
          else f"i.MX 8M Plus VX delegate: {', '.join(unsupported)} not on its list (CPU fallback)")
    height, width = input_hw(entry.preprocess.input_size)
    return [
        entry.name, entry.architecture, entry.backbone, entry.dataset,
        f"{facts['miou']['fp32']:.2f}",
        f"{facts['miou']['int8']:.2f} per-channel (CPU, GPU) / {facts['miou']['int8_per_tensor']:.2f} per-tensor "
        "(NPU, `--target imx8mp`)",
        f"{height}x{width}x3", f"{facts['ops']['total'] / 1e9:.2f} G", f"{facts['params'] / 1e6:.2f} M",
        _mb(facts["fp32_bytes"]), f"{_mb(facts['int8_bytes'])} / {_mb(facts['int8_per_tensor_bytes'])}",
        _npu_cell(facts),
        f"LiteRT CPU x86-64 (XNNPACK): FP32 and both INT8 files run and evaluated; {vx} ({VX_DELEGATE_SOURCE}; "
        "not run on the board)",
    ]


def _npu_cell(facts: dict) -> str:
    """The i.MX 93 column: Vela's NPU time for the `--target imx93` file, what the CPU is left, its mIoU."""
    vela = facts.get("vela", {}).get("imx93")
    if vela is None:
        return "- (Vela not installed)"
    cpu = ", ".join(vela["cpu_ops"]) if vela["cpu_ops"] else "0 ops on the CPU"
    _, height, width, classes = facts["imx93_output"]
    return (f"{vela['npu_ms']:.1f} ms (`--target imx93`), {cpu}; host: exact upsample + argmax of the "
            f"{height}x{width}x{classes} logits; mIoU {facts['miou']['imx93']:.2f}")


def _official_npu(fact: dict) -> str:
    vela = fact.get("vela", {}).get("official_int8")
    if vela is None:
        return "-"
    cpu = ", ".join(vela["cpu_ops"]) or "none"
    return f"{vela['npu_ms']:.1f} ms, on the CPU: {cpu}"


def _input_handling(entries: list[ModelEntry]) -> str:
    """E.g. "513x513, pad with the mean pixel"; each model's own where they differ."""
    def one(entry: ModelEntry) -> str:
        height, width = input_hw(entry.preprocess.input_size)
        enlarge = "smaller frames enlarged to fit, " if entry.preprocess.upscale else ""
        return f"{height}x{width}, {enlarge}pad with the mean pixel"

    kinds = dict.fromkeys(one(entry) for entry in entries)
    if len(kinds) == 1:
        return next(iter(kinds))
    return "; ".join(f"{entry.name}: {one(entry)}" for entry in entries)


def markdown(entries: list[ModelEntry], facts: list[dict], data: str) -> str:
    """Returns the card as Markdown: the seed table, then published vs measured reference numbers."""
    lines = [f"mIoU measured on {data}, DeepLab preprocessing ({_input_handling(entries)}), "
             "one confusion matrix over the split. OPS = 2 x conv/depthwise MACs + bias, residual and pool adds "
             "(final upsample and argmax excluded). Params: batch norm folded into the convs. i.MX 93: Vela "
             f"{VELA_VERSION}'s estimate at 1 GHz, reproduced by `vela {' '.join(IMX93_OPTIONS)} FILE.tflite`.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(card_row(e, f)) + " |" for e, f in zip(entries, facts)]
    lines += ["", f"Reference: the official INT8 file on the same data ({data}), and the figures published for "
              "each model on its own data:", "",
              "| Model | official INT8 .tflite, measured | official file on the i.MX 93 NPU (Vela) | published FP32 "
              "| published 8-bit | published on |",
              "| --- | --- | --- | --- | --- | --- |"]
    for entry, fact in zip(entries, facts):
        official = fact["miou"].get("official_int8")
        lines.append(f"| {entry.name} | {'-' if official is None else f'{official:.2f}'} | {_official_npu(fact)} | "
                     f"{entry.published.get('miou_fp32', '-')} | {entry.published.get('miou_int8', '-')} | "
                     f"{entry.published_on if entry.published else '-'} |")
    for fact in facts:
        if fact.get("class_map"):
            lines += ["", f"- {fact['name']} is scored zero-shot: its classes are mapped onto the data's through "
                      f"`{fact['class_map']}`. Its training data is not here, so its own classes are not measured."]
    return "\n".join(lines) + "\n"


def plot_charts(entry: ModelEntry, fact: dict, out_dir: Path) -> list[Path]:
    """Writes <name>_per_class_iou.png (FP32 vs INT8) and <name>_confusion_int8.png; returns their paths."""
    try:
        import matplotlib
    except ImportError:
        warn("matplotlib is not installed (pip install 'edgeseg[plot]'); no charts written")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = tuple(fact.get("class_names", entry.class_names))
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(12, 4.5))
    series = [("fp32", "edgeseg FP32"), ("int8", "INT8 per-channel"), ("int8_per_tensor", "INT8 per-tensor"),
              ("official_int8", "official INT8")]
    series = [(k, label) for k, label in series if k in fact["per_class_iou"]]
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        values = [np.nan if v is None else v for v in fact["per_class_iou"][key]]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=f"{label} ({fact['miou'][key]:.2f})")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("IoU %")
    ax.set_ylim(0, 118)  # headroom so the legend sits above the bars
    ax.set_title(f"{entry.name}: per-class IoU")
    ax.legend(loc="upper center", ncol=len(series), frameon=False)
    fig.tight_layout()
    iou_path = out_dir / f"{entry.name}_per_class_iou.png"
    with atomic_path(iou_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

    matrix = np.asarray(fact["int8_confusion"], dtype=np.float64)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(x, names, rotation=90)
    ax.set_yticks(x, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(f"{entry.name} INT8: confusion (rows normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    confusion_path = out_dir / f"{entry.name}_confusion_int8.png"
    with atomic_path(confusion_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return [iou_path, confusion_path]


def write_card(entries: list[ModelEntry], facts: list[dict], data: str, out_dir: Path) -> Path:
    """Writes card.md and card.json into out_dir; returns the Markdown path."""
    write_json(out_dir / "card.json", {"data": data, "models": facts})
    path = out_dir / "card.md"
    with atomic_path(path) as tmp:
        tmp.write_text(markdown(entries, facts, data))
    return path


def scores_on(entry: ModelEntry, class_map: str | None) -> bool:
    """True if the entry's classes are the data's: VOC's without a class map, else those the map covers."""
    from edgeseg.data.labelsets import load_mapping
    from edgeseg.data.voc import VOC_CLASSES

    if class_map is None:
        return entry.class_names == VOC_CLASSES
    return set(entry.class_names) <= set(load_mapping(class_map).pairs)
