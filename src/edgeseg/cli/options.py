"""What every command shares: the one-line-error parser, the help formatter, option types and groups,
and opening the model the options name."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.checks import MAX_THREADS
from edgeseg.errors import EdgesegError

if TYPE_CHECKING:
    from edgeseg.runtimes.factory import OpenedModel


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (`edgeseg: error: ...`, exit 2), without the usage."""

    def error(self, message: str):
        # A required option with hidden old spellings is a group: say "required", as for any other option.
        message = re.sub(r"^one of the arguments (\S+) is required$", r"the following arguments are required: \1",
                         message)
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


class DefaultsFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help when it has a real default the help text does not mention
    (argparse's ArgumentDefaultsHelpFormatter would also print "(default: None)" and "(default: False)")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)"


class RawDefaultsFormatter(DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    """DefaultsFormatter for parsers whose description is laid out by hand (kept as written)."""


def add_source_args(parser: argparse.ArgumentParser, *, tflite: bool = True, model_help: str | None = None) -> None:
    """Adds the mutually exclusive model sources: --model NAME, --weights CHECKPOINT (and --tflite FILE)."""
    from edgeseg.zoo.registry import DEFAULT_MODEL

    model_help = model_help or f"zoo model name (default {DEFAULT_MODEL}; see `edgeseg models`)"
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help=model_help)
    if tflite:
        source.add_argument("--tflite", type=Path, help="any segmentation .tflite file (runs with LiteRT)")
    source.add_argument("--weights", type=Path, help="a fine-tuned checkpoint (.safetensors from `edgeseg train`)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    add_source_args(parser)
    parser.add_argument("--backend", choices=["litert", "torch"],
                        help="litert (default: a zoo model runs its official INT8 .tflite) or torch (FP32; the default "
                             "for the entries edgeseg trained, which have no official file)")
    parser.add_argument("--threads", type=threads_int, metavar="N", default=None,
                        help="LiteRT CPU threads (default: LiteRT's; the torch backend ignores it)")
    parser.add_argument("--delegate", type=Path, metavar="PATH",
                        help="external LiteRT delegate library that runs the .tflite on an NPU, e.g. "
                             "/usr/lib/libvx_delegate.so (i.MX 8M Plus) or /usr/lib/libethosu_delegate.so (i.MX 93, "
                             "for a *_vela.tflite)")
    parser.add_argument("--input-size", type=size_arg, metavar="N|HxW",
                        help="run the PyTorch model at this input, e.g. 721x961 (default: the model's; a .tflite "
                             "runs at the size it was exported at)")
    parser.add_argument("--upscale", action=argparse.BooleanOptionalAction, default=None,
                        help="enlarge frames smaller than the input to fit it, or not (default: as the model "
                             "was trained; see `edgeseg train --upscale`)")


def add_data_arg(parser: argparse.ArgumentParser, help: str, *, required: bool = False, flag: str = "--data",
                 old: tuple[str, ...] = ()) -> None:
    """Adds a dataset-folder option (`--data DIR` in every command), with its `old` spellings as hidden aliases."""
    dest = flag.lstrip("-").replace("-", "_")
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(flag, type=Path, metavar="DIR", help=help)
    for alias in old:  # still accepted, not shown
        group.add_argument(alias, dest=dest, type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)




OUTPUT_KINDS = ("argmax", "logits")


def int_in(low: int, high: int):
    """Returns an argparse type: a whole number in low..high, the range named in the error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number in {low}..{high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {value}")
        return value

    return parse




positive_int = int_in(1, 10**9)  # counts: at least 1, and bounded so that no option can overflow


def threads_int(text: str) -> int:
    """argparse type for --threads: checks.check_threads, the API's and the runtime's check."""
    from edgeseg.checks import check_threads

    try:
        return check_threads(int(text))
    except (ValueError, EdgesegError):
        raise argparse.ArgumentTypeError(f"threads must be a whole number in 1..{MAX_THREADS}, got {text!r}") from None


def size_arg(text: str) -> tuple[int, int]:
    """argparse type for --input-size: N or HxW (see `parse_size`)."""
    from edgeseg.checks import parse_size

    try:
        return parse_size(text)
    except EdgesegError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def camera_arg(text: str) -> str:
    """argparse type for --camera: an index, a device path or a URL; an empty name is refused (it would be
    read as the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the camera name is empty: give an index (0 = /dev/video0), a device path "
                                         "or a stream URL")
    return text


def _thread_list(text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated thread counts in 1..{MAX_THREADS}, "
                                         f"got {text!r}") from None
    if not threads or min(threads) < 1 or max(threads) > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"thread counts must be 1..{MAX_THREADS}, got {text!r}")
    return threads


def open_model(args: argparse.Namespace) -> OpenedModel:
    """Opens what --model / --tflite / --weights, --backend, --threads, --delegate, --input-size and --upscale
    name."""
    from edgeseg.runtimes.factory import open_model as open_source

    return open_source(args.model, tflite=args.tflite, weights=args.weights, backend=args.backend,
                       threads=args.threads, input_size=args.input_size, upscale=args.upscale,
                       delegate=args.delegate)


def load_torch_model(args: argparse.Namespace):
    """Returns (torch model, entry) for --model NAME or --weights CHECKPOINT (see edgeseg.runtimes.factory)."""
    from edgeseg.runtimes.factory import torch_available

    if not torch_available():
        raise EdgesegError("this command needs PyTorch: pip install 'edgeseg[export]'")
    from edgeseg.runtimes.factory import load_torch_model as load

    return load(args.model, getattr(args, "weights", None))


class ExportOutput(argparse.Action):
    """export's -o/--output FILE. Before every command's output became -o/--output, export's --output was
    what is now --output-kind (argmax|logits): `--output argmax` and `--output logits` still set the kind, so
    old command lines keep working (an output file named just `argmax` or `logits`, with no .tflite, is not a
    plausible choice; `-o argmax` and `--output ./argmax` still name a file)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string == "--output" and values in OUTPUT_KINDS:
            namespace.output_kind = values
        else:
            setattr(namespace, self.dest, Path(values))


def add_command(sub: argparse._SubParsersAction, name: str, help: str, **kwargs) -> argparse.ArgumentParser:
    """A command's parser, with the help formatter every command uses."""
    return sub.add_parser(name, help=help, formatter_class=DefaultsFormatter, **kwargs)
