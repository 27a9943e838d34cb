"""Build zoo models with their weights, and open any model as a Runtime.

Pretrained torch weights come from the official TFLite file, dequantized once and cached as
safetensors (never pickle). Fine-tuned checkpoints are safetensors files whose metadata names the
architecture and carries class names, so they load like any zoo entry.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg.checks import parse_size
from edgeseg.errors import EdgesegError, warn
from edgeseg.io.files import atomic_path
from edgeseg.pipeline import input_hw
from edgeseg.zoo.registry import DEFAULT_MODEL, ModelEntry, get_entry, get_family
from edgeseg.zoo.weights import cache_dir, resolve_weights

if TYPE_CHECKING:
    from edgeseg.models.deeplabv3 import ClassGroups


def official_tflite(name: str) -> Path:
    """Returns the verified local path of an entry's official INT8 TFLite file (entries trained by edgeseg have
    none: their .tflite files are exported from the shipped weights)."""
    entry = get_entry(name)
    if entry.weights.bundled:
        raise EdgesegError(f"{name} was trained by edgeseg and has no official .tflite; run it with PyTorch "
                           f"(--backend torch) or export one: edgeseg export --model {name}")
    return resolve_weights(entry.weights)


def has_official_tflite(name: str) -> bool:
    """True for entries whose weights come from an official INT8 .tflite (not trained by edgeseg)."""
    return not get_entry(name).weights.bundled


DIGEST_KEY = "edgeseg_tensors_sha256"  # safetensors metadata: a hash of every tensor, written with them


def tensors_digest(tensors: Any) -> str:
    """Returns the sha256 of every tensor's name, dtype, shape and bytes, in name order. `tensors` is a dict,
    or an open safetensors file (then read one tensor at a time)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors.keys()):
        value = tensors.get_tensor(name) if hasattr(tensors, "get_tensor") else tensors[name]
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_verified(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> str:
    """Writes the tensors atomically, with a digest of them in the metadata for `read_verified`; returns it."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    digest = tensors_digest(tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={**(metadata or {}), DIGEST_KEY: digest})
    return digest


def read_verified(path: Path, *, load: bool = True) -> tuple[dict, dict[str, str]]:
    """Returns (tensors, metadata) of a safetensors file, or raises a one-line error naming the file
    if it cannot be read or its tensors do not match the digest written with them. With `load=False` the
    file is checked one tensor at a time and `tensors` is empty (for files larger than memory)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()} if load else {}
            digest = tensors_digest(tensors if load else f) if DIGEST_KEY in metadata else None
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged or foreign file
        raise EdgesegError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:120]})") from None
    if digest is not None and digest != metadata[DIGEST_KEY]:
        raise EdgesegError(f"{path}: damaged (its tensors do not match the digest written with them)")
    return tensors, metadata


def pretrained_state_dict(entry: ModelEntry) -> dict:
    """Returns the float state dict imported from the official file (cached as safetensors), or read from the
    weights shipped with edgeseg for the entries it trained.

    The cache is verified on every read; a damaged or unverifiable one is rebuilt from the official file,
    itself checked against its sha256.
    """

    from edgeseg.zoo.official import state_dict_from_tflite

    if entry.weights.bundled:  # edgeseg's own: float16 on disk (half the bytes), float32 to compute
        tensors, _ = read_verified(resolve_weights(entry.weights))
        return {name: value.float() for name, value in tensors.items()}
    cached = cache_dir() / f"{entry.name}-{entry.weights.sha256[:12]}.safetensors"
    if cached.is_file():
        try:
            state, metadata = read_verified(cached)
            if metadata.get(DIGEST_KEY) and metadata.get("sha256") == entry.weights.sha256:
                return state
            problem = "written without a digest"
        except EdgesegError as exc:
            problem = str(exc)
        warn(f"rebuilding the weights cache: {problem}")
    state = state_dict_from_tflite(resolve_weights(entry.weights), get_family(entry.family).tf_backbone_scope)
    save_verified(state, cached, {"source": entry.weights.url, "sha256": entry.weights.sha256})
    return state


def build_model(entry: ModelEntry, num_classes: int | None = None):
    """Returns an untrained torch model with the entry's architecture (its family's builder)."""
    return get_family(entry.family).build(num_classes or entry.num_classes, **entry.arch)


def create_model(name: str, *, pretrained: bool = True, class_names: tuple[str, ...] | None = None):
    """Returns the zoo model `name` as a torch module, with the official weights if `pretrained`.

    With other `class_names`, backbone and head are pretrained and the classifier is new; its rows for
    classes the entry already knows (e.g. background, person) start from the pretrained rows, so a
    fine-tune begins from the pretrained model's own decision between those classes. When a shipped class
    mapping leads from the entry's classes to exactly these (e.g. Cityscapes to CamVid), each class starts
    from the first model class mapped to it (pavement from sidewalk, tree from vegetation, ...).
    """
    entry = get_entry(name)
    names = tuple(class_names or entry.class_names)
    model = build_model(entry, len(names))
    if not pretrained:
        return model
    state = _with_classifier_for(model, pretrained_state_dict(entry), entry.class_names, names)
    load_state_checked(model, state, entry.weights.filename)
    return model


def _with_classifier_for(model, state: dict, trained: tuple[str, ...], names: tuple[str, ...]) -> dict:
    """`state` (trained for classes `trained`) with the classifier of `model` (classes `names`): rows for
    classes that `trained` knows, directly or through a shipped mapping, are copied; the rest stay new."""
    if names == trained:
        return state
    from edgeseg.data.labelsets import source_classes

    sources = source_classes(trained, names)
    fresh = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.classifier.")}
    for i, class_name in enumerate(names):
        if class_name in sources:
            source = trained.index(sources[class_name])
            for key in fresh:
                fresh[key][i] = state[key][source]
    return {**{k: v for k, v in state.items() if not k.startswith("head.classifier.")}, **fresh}


def is_checkpoint(init: str | Path) -> bool:
    """True when `init` names a checkpoint file (.safetensors from `edgeseg train`), not a zoo model."""
    return str(init).lower().endswith(".safetensors")


def init_entry(init: str | Path) -> ModelEntry:
    """The entry a fine-tune starts from: zoo model `init`, or the checkpoint at path `init`."""
    if str(init).lower().endswith(".tflite"):
        raise EdgesegError(f"{init}: a .tflite holds no trainable weights; start from a zoo model or a "
                           ".safetensors checkpoint")
    return checkpoint_entry(init) if is_checkpoint(init) else get_entry(str(init))


def zoo_base(init: str | Path) -> str:
    """The zoo entry under `init`: itself, or the one a checkpoint was fine-tuned from (at any depth)."""
    return checkpoint_metadata(Path(init))["edgeseg_base"] if is_checkpoint(init) else str(init)


def init_model(init: str | Path, class_names: tuple[str, ...] | None = None,
               class_groups: ClassGroups | None = None):
    """Returns the torch model a fine-tune starts from: `create_model(init)` for a zoo name, or the weights
    of a checkpoint, its classifier rows carried over by class name as `create_model` does. With
    `class_groups` the classifier stays the init model's whole, and each class is the maximum of its group of
    rows (models.deeplabv3.merge_classes)."""
    if class_groups is not None:
        model = init_model(init)
        model.class_groups = tuple(tuple(int(row) for row in group) for group in class_groups)
        return model
    if not is_checkpoint(init):
        return create_model(str(init), class_names=class_names)
    trained, entry = load_checkpoint(init)
    names = tuple(class_names or entry.class_names)
    if names == entry.class_names:
        return trained
    if trained.class_groups is not None:
        raise merged_checkpoint_error(init, entry.class_names)
    model = build_model(entry, len(names))
    load_state_checked(model, _with_classifier_for(model, trained.state_dict(), entry.class_names, names), str(init))
    return model


def merged_checkpoint_error(init: str | Path, class_names: tuple[str, ...]) -> EdgesegError:
    """The error for starting other classes from a merged-head checkpoint (its head keeps VOC's rows)."""
    return EdgesegError(f"{init}: its classes are merged from VOC's ({', '.join(class_names)}); fine-tune it for "
                        "those classes, or start other classes from the zoo model")


def load_state_checked(model, state: dict, source: str) -> None:
    """Loads `state` into `model`, raising one line on any missing, extra or misshaped tensor."""
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise EdgesegError(f"{source}: weights do not match the model: missing {missing[:3]}, extra {extra[:3]}")
    for name, value in state.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise EdgesegError(f"{source}: {name} has shape {tuple(value.shape)}, "
                               f"the model expects {tuple(expected[name].shape)}")
    model.load_state_dict(state)


def load_official_weights(model: Any, path: str | Path) -> Any:
    """Copies the official file's weights into `model`, failing on any missing, extra or misshaped tensor."""
    from edgeseg.zoo.official import state_dict_from_tflite

    load_state_checked(model, state_dict_from_tflite(path), str(path))
    return model


# Fine-tuned checkpoints: safetensors whose metadata names the base entry and the class names.

def save_checkpoint(model, path: str | Path, entry: ModelEntry, base_name: str) -> None:
    """Writes model weights as safetensors, with the base entry and class names in the metadata."""
    metadata = {"edgeseg_base": base_name, "class_names": json.dumps(list(entry.class_names))}
    # How frames reach the model; checkpoints written before these keys run at the base entry's.
    metadata["input_size"] = "x".join(map(str, input_hw(entry.preprocess.input_size)))
    metadata["upscale"] = "1" if entry.preprocess.upscale else "0"
    if getattr(model, "class_groups", None) is not None:
        metadata["class_groups"] = json.dumps([list(group) for group in model.class_groups])
    save_verified(model.state_dict(), Path(path), metadata)


def write_shipped_weights(checkpoint: str | Path, name: str) -> Path:
    """Writes a checkpoint's weights as zoo entry `name`'s shipped file (`TRAINED_DIR/<name>.safetensors`): float
    tensors in float16, which halves the repository's bytes (the figures are measured on this file), with the
    checkpoint's classes, input handling and digest in the metadata. Returns the path; the registry records its
    sha256."""
    import torch

    from edgeseg.zoo.registry import TRAINED_DIR

    metadata = checkpoint_metadata(Path(checkpoint))
    if "class_groups" in metadata:  # zoo entries build one classifier row per class
        raise EdgesegError(f"{checkpoint}: a merged-head checkpoint cannot ship as a zoo entry yet (its head keeps "
                           "VOC's rows); ship a checkpoint trained with --no-merge-head")
    tensors, _ = read_verified(Path(checkpoint))
    half = {key: value.half() if value.is_floating_point() else value for key, value in tensors.items()}
    kept = {key: metadata[key] for key in ("edgeseg_base", "class_names", "input_size", "upscale") if key in metadata}
    path = TRAINED_DIR / f"{name}.safetensors"
    save_verified(half, path, {**kept, "trained_from": metadata.get(DIGEST_KEY, ""), "dtype": str(torch.float16)})
    return path


def checkpoint_entry(path: str | Path) -> ModelEntry:
    """Returns the entry a checkpoint was trained from, renamed and with the checkpoint's classes."""
    path = Path(path)
    metadata = checkpoint_metadata(path)
    base = get_entry(metadata["edgeseg_base"])
    classes = tuple(json.loads(metadata["class_names"]))
    preprocess = base.preprocess
    if "input_size" in metadata:  # trained for another input size, or on enlarged frames
        try:
            size = parse_size(metadata["input_size"])
        except EdgesegError:
            raise EdgesegError(f"{path}: bad input_size metadata {metadata['input_size']!r}") from None
        preprocess = replace(preprocess, input_size=size, upscale=metadata.get("upscale") == "1")
    # Fine-tuned weights left the official file behind, and its learned activation ranges with it.
    return replace(base, name=path.stem, class_names=classes, published={}, measured={}, preprocess=preprocess,
                   dataset=f"fine-tuned from {base.name} to {', '.join(classes)}", per_tensor_activations="mse")


def checkpoint_metadata(path: Path) -> dict[str, str]:
    """The safetensors metadata of an edgeseg checkpoint, or a one-line error."""
    from safetensors import safe_open

    if not path.is_file():
        raise EdgesegError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any parse error means "not a checkpoint"
        raise EdgesegError(f"{path}: not a safetensors checkpoint ({str(exc).splitlines()[0][:120]})") from None
    if "edgeseg_base" not in metadata or "class_names" not in metadata:
        raise EdgesegError(f"{path}: not an edgeseg checkpoint (no 'edgeseg_base' metadata)")
    return metadata


def load_checkpoint(path: str | Path):
    """Returns (torch model, entry) for a fine-tuned checkpoint."""
    entry = checkpoint_entry(path)
    groups = checkpoint_class_groups(Path(path), len(entry.class_names))
    model = build_model(entry, None if groups is None else 1 + max(max(group) for group in groups))
    load_state_checked(model, read_verified(Path(path))[0], str(path))
    model.class_groups = groups
    return model, entry


def checkpoint_class_groups(path: Path, num_classes: int) -> ClassGroups | None:
    """The classifier rows each class of a merged-head checkpoint takes the maximum of (None for others)."""
    raw = checkpoint_metadata(path).get("class_groups")
    if raw is None:
        return None
    try:
        groups = tuple(tuple(row for row in group) for group in json.loads(raw))
    except (ValueError, TypeError):
        groups = ()
    rows = [row for group in groups for row in group]
    if (len(groups) != num_classes or not all(groups) or not all(type(row) is int for row in rows)
            or sorted(rows) != list(range(len(rows)))):
        raise EdgesegError(f"{path}: bad class_groups metadata (expected {num_classes} disjoint, non-empty groups "
                           "of classifier rows 0..N-1)")
    return groups


def model_preprocess(model: str | None = None, weights: str | Path | None = None):
    """The preprocessing of a checkpoint (its metadata) or a zoo model (default: the default model), read without
    building it: a checkpoint trained for another input size brings its own."""
    if weights is not None:
        return checkpoint_entry(weights).preprocess
    return get_entry(model or DEFAULT_MODEL).preprocess


def qat_ranges_file(model: str | None = None, weights: str | Path | None = None,
                    activation_ranges: str | None = None) -> Path | None:
    """The official QAT file whose learned activation ranges an export uses: a zoo model's, when they are asked
    for (`activation_ranges="qat"`) or when the entry chose them for per-tensor files (None, the default)."""
    if activation_ranges not in (None, "qat") or weights is not None:
        return None
    entry = get_entry(model or DEFAULT_MODEL)
    if activation_ranges is None and entry.per_tensor_activations != "qat":
        return None
    return official_tflite(entry.name)
