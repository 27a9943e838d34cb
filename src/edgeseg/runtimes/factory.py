"""Open a model as a runtime: one factory for every backend, and the zoo / .tflite / checkpoint sources.

`open_runtime` is the one way to construct a runtime (`benchmark`, `card` and the API all go through it),
so another backend (ONNX Runtime, say) is one new module in `edgeseg.runtimes` plus one line in `OPENERS`.
`open_model` resolves what a user names (a zoo model, a .tflite file, a fine-tuned checkpoint) to a
runtime and its class names. Nothing here imports torch unless the torch backend is asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg.checks import checked_size
from edgeseg.errors import EdgesegError
from edgeseg.pipeline import DEEPLAB, Runtime, Size
from edgeseg.zoo.registry import DEFAULT_MODEL  # noqa: F401 - also importable from here

if TYPE_CHECKING:
    from edgeseg.zoo.registry import ModelEntry, Preprocess

BACKENDS = ("litert", "torch")


def _open_litert(source: object, *, threads: int | None = None, delegate: str | Path | None = None,
                 **_: object) -> Runtime:
    if not isinstance(source, str | Path):
        raise EdgesegError("the litert backend runs a .tflite file; got a model object")
    from edgeseg.runtimes.litert import LiteRTRuntime

    return LiteRTRuntime(source, num_threads=threads, delegate=delegate)


def _open_torch(source: object, *, num_classes: int | None = None, name: str = "torch",
                preprocess: Preprocess | None = None, **_: object) -> Runtime:
    if isinstance(source, str | Path):
        raise EdgesegError(f"{source}: the torch backend runs a torch model, not a file; use litert for .tflite")
    if not torch_available():
        raise EdgesegError("the torch backend needs PyTorch: pip install 'edgeseg[torch]'")
    from edgeseg.runtimes.torch import TorchRuntime

    if num_classes is None:
        raise EdgesegError("the torch backend needs num_classes")
    return TorchRuntime(source, num_classes=num_classes, name=name, preprocess=preprocess or DEEPLAB)


# backend name -> function(source, **options) returning a Runtime
OPENERS: dict[str, Callable[..., Runtime]] = {"litert": _open_litert, "torch": _open_torch}


def open_runtime(source: str | Path | object, backend: str = "litert", *, threads: int | None = None,
                 delegate: str | Path | None = None, num_classes: int | None = None,
                 name: str | None = None, preprocess: Preprocess | None = None) -> Runtime:
    """Returns a runtime for `source`: a .tflite path (backend "litert") or a torch module ("torch").

    threads and delegate apply to LiteRT; num_classes, name and preprocess (input size, upscale) to torch:
    pass a checkpoint's `entry.preprocess`, else it runs at 513 without upscale. A .tflite brings its own.
    """
    opener = OPENERS.get(backend)
    if opener is None:
        raise EdgesegError(f"unknown backend {backend!r}; expected one of {', '.join(OPENERS)}")
    options: dict[str, object] = {"threads": threads, "delegate": delegate, "num_classes": num_classes}
    if name is not None:
        options["name"] = name
    if preprocess is not None:
        options["preprocess"] = preprocess
    return opener(source, **options)


def torch_available() -> bool:
    """True if PyTorch can be imported (the `torch` extra)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def tflite_class_names(path: str | Path, num_classes: int) -> tuple[str, ...]:
    """Returns the class names stored in an edgeseg export, else VOC's for 21 classes, else class_<i>."""
    from edgeseg.data.voc import VOC_CLASSES
    from edgeseg.tflite.reader import CLASSES_METADATA, read_metadata

    stored = read_metadata(path).get(CLASSES_METADATA)
    if stored:
        return tuple(json.loads(stored.decode()))
    if num_classes in (0, len(VOC_CLASSES)):
        return VOC_CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))


@dataclass
class OpenedModel:
    """A runtime with what it predicts and where it came from."""

    runtime: Runtime
    class_names: tuple[str, ...]
    description: str  # e.g. "deeplabv3_mnv2_dm05_voc (official INT8 TFLite)"
    model: str  # zoo name, or the file name of a .tflite / checkpoint
    backend: str  # "litert" or "torch"


def open_model(model: str | Path | None = None, *, tflite: str | Path | None = None,
               weights: str | Path | None = None, backend: str | None = None,
               threads: int | None = None, input_size: Size | None = None,
               upscale: bool | None = None, delegate: str | Path | None = None) -> OpenedModel:
    """Opens a zoo model by name, a .tflite file, or a fine-tuned checkpoint (.safetensors).

    `model` may itself be a path ending in .tflite or .safetensors. Defaults: a zoo model runs its
    official INT8 .tflite with LiteRT (the fastest accurate runtime, and no torch import); pass
    backend="torch" for the PyTorch FP32 model. Entries edgeseg trained have no official file: they run in
    PyTorch from their shipped weights (export them for LiteRT). A .tflite runs with LiteRT, a checkpoint with torch.

    `input_size` (N or (H, W)) and `upscale` (enlarge smaller frames to fit) replace the model's own input
    handling; None keeps it. A PyTorch model runs at any size; a .tflite only at the size it was exported at.

    `delegate` is an external LiteRT delegate library (an NPU's, e.g. /usr/lib/libvx_delegate.so) for the
    .tflite or the zoo model's official file; the PyTorch backend and checkpoints take none.
    """
    model, tflite, weights, input_size = _checked_sources(model, tflite, weights, backend, input_size, upscale,
                                                          delegate)
    if tflite is not None:
        if backend == "torch":
            raise EdgesegError("--tflite runs with LiteRT; drop --backend torch or use --model/--weights")
        runtime = open_runtime(tflite, "litert", threads=threads, delegate=delegate)
        names = tflite_class_names(tflite, runtime.num_classes)
        runtime = _with_input_handling(runtime, input_size, upscale, str(tflite))
        description = _with_delegate(_described(str(tflite), runtime, input_size, upscale), delegate)
        return OpenedModel(runtime, names, description, Path(tflite).name, "litert")
    if weights is not None:
        if backend == "litert":
            raise EdgesegError("--weights is a PyTorch checkpoint; export it to .tflite to run it with LiteRT")
        net, entry = load_torch_model(weights=weights)
        runtime = open_runtime(net, "torch", num_classes=entry.num_classes, name=f"torch:{Path(weights).name}",
                               preprocess=_input_handling(entry.preprocess, input_size, upscale))
        return OpenedModel(runtime, entry.class_names, _described(str(weights), runtime, input_size, upscale),
                           Path(weights).name, "torch")
    from edgeseg.zoo.registry import get_entry

    entry = get_entry(str(model or DEFAULT_MODEL))
    if entry.weights.bundled:
        _check_trained_entry(entry.name, backend, delegate)
    # An official entry runs its QAT .tflite by default; one edgeseg trained has no such file and runs in PyTorch.
    if (backend or ("torch" if entry.weights.bundled else "litert")) == "litert":
        from edgeseg.zoo.build import official_tflite

        runtime = open_runtime(official_tflite(entry.name), "litert", threads=threads, delegate=delegate)
        runtime = _with_input_handling(runtime, input_size, upscale, f"{entry.name}'s official file")
        description = _with_delegate(_described(f"{entry.name} (official INT8 TFLite)", runtime, input_size, upscale),
                                     delegate)
        return OpenedModel(runtime, entry.class_names, description, entry.name, "litert")
    net, entry = load_torch_model(entry.name)
    runtime = open_runtime(net, "torch", num_classes=entry.num_classes, name=f"torch:{entry.name}",
                           preprocess=_input_handling(entry.preprocess, input_size, upscale))
    description = _described(f"{entry.name} (PyTorch FP32)", runtime, input_size, upscale)
    return OpenedModel(runtime, entry.class_names, description, entry.name, "torch")


def _checked_sources(model, tflite, weights, backend: str | None, input_size: Size | None, upscale: bool | None,
                     delegate) -> tuple:
    """open_model's checks, all before any model is built or resolved; a path given as `model` becomes the
    .tflite or the checkpoint it names. Returns (model, tflite, weights, input_size as (H, W) or None)."""
    if backend is not None and backend not in BACKENDS:
        raise EdgesegError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if input_size is not None:
        input_size = checked_size(input_size)
    if upscale is not None and not isinstance(upscale, bool):
        raise EdgesegError(f"upscale must be True, False or None, got {upscale!r}")
    if model is not None and tflite is None and weights is None:
        suffix = Path(str(model)).suffix.lower()
        if suffix == ".tflite":
            model, tflite = None, model
        elif suffix == ".safetensors":
            model, weights = None, model
    if sum(x is not None for x in (model, tflite, weights)) > 1:
        raise EdgesegError("name one model: a zoo name, a .tflite file or a checkpoint")
    if delegate is not None and weights is not None:
        raise EdgesegError("--delegate runs a .tflite with LiteRT, not a PyTorch checkpoint: export the checkpoint "
                           "(`edgeseg export --weights ...`) and pass the file with --tflite")
    if delegate is not None and backend == "torch":
        raise EdgesegError("--delegate runs a .tflite with LiteRT, not the PyTorch model: drop --backend torch")
    return model, tflite, weights, input_size


def _check_trained_entry(name: str, backend: str | None, delegate) -> None:
    """An entry edgeseg trained ships PyTorch weights, no .tflite: what it cannot do is said before any work."""
    export = f"export it (`edgeseg export --model {name} --target imx8mp|imx93`) and pass the file with --tflite"
    if delegate is not None or backend == "litert":
        raise EdgesegError(f"{name} ships as PyTorch weights, with no .tflite of its own: {export}")
    if not torch_available():
        raise EdgesegError(f"{name} ships as PyTorch weights: install PyTorch (pip install 'edgeseg[torch]'), or "
                           f"on a machine that has it, {export}")


def _input_handling(preprocess: Preprocess, input_size: tuple[int, int] | None,
                    upscale: bool | None) -> Preprocess:
    """`preprocess` with the input size (checked) and upscale a user asked for (None keeps the model's)."""
    from dataclasses import replace

    changes: dict[str, object] = {}
    if input_size is not None:
        changes["input_size"] = input_size
    if upscale is not None:
        changes["upscale"] = upscale
    return replace(preprocess, **changes)


def _with_input_handling(runtime: Runtime, input_size: tuple[int, int] | None, upscale: bool | None,
                         what: str) -> Runtime:
    """A .tflite's input size (checked) is fixed when it is exported; only its upscale flag can change."""
    if input_size is not None and input_size != tuple(runtime.input_size):
        have, want = ("x".join(map(str, s)) for s in (runtime.input_size, input_size))
        raise EdgesegError(f"{what} takes {have} input, not {want}: export the model at that size "
                           f"(`edgeseg export --input-size {want}`), or run its PyTorch model, which takes any")
    if upscale is not None:
        runtime.upscale = upscale
    return runtime


def _described(description: str, runtime: Runtime, input_size: tuple[int, int] | None,
               upscale: bool | None) -> str:
    """The description, with the input handling when the user chose it."""
    if input_size is None and upscale is None:
        return description
    size = "x".join(map(str, runtime.input_size))
    return f"{description} at {size}{', frames enlarged to fit' if getattr(runtime, 'upscale', False) else ''}"


def _with_delegate(description: str, delegate: str | Path | None) -> str:
    """The description, naming the delegate library when one runs the model (it may fall back to the CPU)."""
    return f"{description}, delegate {Path(delegate).name}" if delegate else description


def load_torch_model(model: str | None = None, weights: str | Path | None = None) -> tuple[Any, ModelEntry]:
    """Returns (torch model, registry entry) for a zoo name or a fine-tuned checkpoint (needs torch)."""
    if not torch_available():
        raise EdgesegError("the PyTorch model needs PyTorch: pip install 'edgeseg[torch]'")
    from edgeseg.zoo.build import create_model, load_checkpoint
    from edgeseg.zoo.registry import get_entry

    if weights is not None:
        return load_checkpoint(Path(weights))
    entry = get_entry(model or DEFAULT_MODEL)
    return create_model(entry.name), entry
