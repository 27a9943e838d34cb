"""The `edgeseg` command line: one module per command (`add_parser`, `run`), the shared options in
`options.py`. It parses, calls the library and prints. A failure is one `edgeseg: error:` line on stderr and
exit code 2 (argparse's own usage errors also exit 2)."""


from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeseg.cli.options import OneLineErrorParser, RawDefaultsFormatter
from edgeseg.errors import EdgesegError

# numpy, Pillow, LiteRT and the rest are imported where they are used, inside main(), whose Ctrl-C handling
# then covers them: this package itself adds nothing heavy to what the `edgeseg` script imports before main.


def __getattr__(name: str):
    if name == "tflite_class_names":  # re-exported: old import path
        from edgeseg.runtimes.factory import tflite_class_names

        return tflite_class_names
    if name == "DEFAULT_BENCH_IMAGE":
        from edgeseg.cli.benchmark import DEFAULT_BENCH_IMAGE

        return DEFAULT_BENCH_IMAGE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DESCRIPTION = """Semantic segmentation for edge devices: segment, evaluate, export, benchmark, fine-tune.
A failure is one `edgeseg: error:` line on stderr and exit code 2; Ctrl-C is exit code 130."""
# Optional packages, and the extra that installs each.
EXTRAS = {"torch": "torch", "safetensors": "torch", "litert_torch": "export", "ai_edge_quantizer": "export",
          "matplotlib": "plot", "av": "video"}
COMMANDS = ("models", "predict", "evaluate", "export", "card", "benchmark")  # modules of this package, in --help order


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from edgeseg import __version__

    parser = OneLineErrorParser(prog="edgeseg", description=DESCRIPTION, formatter_class=RawDefaultsFormatter)
    parser.add_argument("--version", action="version", version=f"edgeseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show other libraries' output (converter and quantizer logs, warnings); by default "
                             "it is silenced and only edgeseg's own lines and progress bars are printed")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"edgeseg.cli.{name}").add_parser(sub)
    from edgeseg.training.command import add_train_parser  # imports torch lazily, inside the command

    add_train_parser(sub)
    for command_parser in sub.choices.values():  # -v also after the command: `edgeseg export ... -v`
        command_parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                    help="show other libraries' output (see edgeseg --help)")
    return parser


def _output_folders(args: argparse.Namespace) -> list[Path]:
    """The folders a command writes in (-o/--output, --out, and that of --json)."""
    folders = [getattr(args, name, None) for name in ("output", "out")]  # export's -o FILE: parents count too
    folders += [args.json.parent] if isinstance(getattr(args, "json", None), Path) else []
    return [folder for folder in folders if isinstance(folder, Path)]


def main(argv: list[str] | None = None) -> int:
    """The `edgeseg` command; returns its exit code: 0, 2 after an error, 130 after Ctrl-C.

    Ctrl-C at any point once main runs, while it imports the libraries too, is the one line
    `edgeseg: interrupted` and exit code 130, never a traceback; after the first, further Ctrl-C wait for
    the cleanup it started (a video keeps the frames done so far, the JSON report is written)."""
    try:
        from edgeseg.io.files import interrupts_held_after_first

        with interrupts_held_after_first(exiting=argv is None):  # None: run as the `edgeseg` program
            try:
                return _main(argv)
            except KeyboardInterrupt:
                print("edgeseg: interrupted", file=sys.stderr)
                return 130
    except KeyboardInterrupt:  # before the handler was in place
        print("edgeseg: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    from edgeseg.logs import set_verbose, warnings_as_lines

    args = build_parser().parse_args(argv)
    set_verbose(args.verbose)
    with warnings_as_lines():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from edgeseg.io.files import removing_new_folders

    try:
        with removing_new_folders(_output_folders(args)):  # a failed command leaves no empty folder it made
            args.func(args)
    except EdgesegError as exc:
        print(f"edgeseg: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        if args.command in ("export", "card"):
            extra = "export,plot" if args.command == "card" else "export"
        print(f"edgeseg: error: `edgeseg {args.command}` needs {exc.name}: pip install 'edgeseg[{extra}]'",
              file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a full disk or an unreadable file outside the places that say more
        where = f" {exc.filename}" if exc.filename else ""
        print(f"edgeseg: error: {exc.strerror or exc}{':' if where else ''}{where}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
