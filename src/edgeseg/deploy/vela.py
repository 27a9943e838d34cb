"""Compile a .tflite for the i.MX 93's Arm Ethos-U65 NPU with Vela, and read Vela's estimate of its cost.

Vela (PyPI `ethos-u-vela`, the `npu` extra) rewrites every op it supports into `ethos-u` custom ops that the
board's Ethos-U delegate runs; what it cannot take stays a TFLite op, run on the Cortex-A55. Its
performance estimate is deterministic, so figures here are reproducible with the printed command. The
settings are NXP's for the i.MX 93 (its eIQ documentation: ethos-u65-256, 384 KB of dedicated SRAM).
"""

from __future__ import annotations

import csv
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.io.files import atomic_path

VELA_VERSION = "5.2.0"  # pinned in the npu extra: estimates change between Vela releases
# NXP's i.MX 93 settings. Each is a Vela option; `--config Arm/vela.ini` is the file Vela ships.
IMX93_OPTIONS = (
    "--accelerator-config", "ethos-u65-256", "--config", "Arm/vela.ini", "--system-config", "Ethos_U65_High_End",
    "--memory-mode", "Dedicated_Sram_384KB", "--optimise", "Performance",
)


@dataclass(frozen=True)
class VelaEstimate:
    """Vela's estimate for one compiled file, at the accelerator clock of the system config (1 GHz)."""

    source: str  # the .tflite compiled
    compiled: str | None  # the `_vela.tflite` kept, if any
    npu_ms: float  # Vela's inference time for the NPU part
    cycles: int
    sram_kib: float
    dram_kib: float
    macs: int
    npu_ops: int  # ethos-u custom ops in the compiled graph (each a run of NPU ops)
    cpu_ops: dict[str, int]  # op types left to the CPU, with their counts
    command: str  # the command that reproduces it

    def summary(self) -> str:
        cpu = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in self.cpu_ops.items()) or "none"
        return (f"Vela (i.MX 93, Ethos-U65-256, 1 GHz): {self.npu_ms:.1f} ms on the NPU, SRAM {self.sram_kib:.0f} KiB, "
                f"DRAM {self.dram_kib:.0f} KiB, ops left on the CPU: {cpu}")

    def as_dict(self) -> dict:
        return dict(vars(self))


def vela_available() -> bool:
    try:
        import ethosu.vela  # noqa: F401
    except ImportError:
        return False
    return True


def compiled_path(path: str | Path) -> Path:
    """Where the compiled file of `path` goes: `<name>_vela.tflite` beside it (Vela's own naming)."""
    path = Path(path)
    return path.with_name(f"{path.stem}_vela.tflite")


def vela_command(path: str | Path, output_dir: str | Path = ".") -> str:
    """The shell command that compiles `path` with NXP's settings and prints the per-layer estimate."""
    return shlex.join(["vela", *IMX93_OPTIONS, "--verbose-performance", "--output-dir", str(output_dir), str(path)])


def compile_for_ethos_u(path: str | Path, output: str | Path | None = None) -> VelaEstimate:
    """Compiles `path` with Vela under NXP's i.MX 93 settings; writes the compiled file to `output` (atomically)
    unless it is None, and returns the estimate. Raises EdgesegError when Vela is missing or refuses the file."""
    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"{path}: no such file")
    if not vela_available():
        raise EdgesegError(f"compiling for the i.MX 93 NPU needs Arm's Vela: pip install 'edgeseg[npu]' "
                           f"(ethos-u-vela=={VELA_VERSION})")
    with tempfile.TemporaryDirectory(prefix="edgeseg-vela-") as tmp:
        # Vela names its outputs after the input; a copy under a fixed name keeps odd file names out of it.
        source = Path(tmp) / "model.tflite"
        shutil.copyfile(path, source)
        run = subprocess.run([sys.executable, "-m", "ethosu.vela", *IMX93_OPTIONS, "--output-dir", tmp, str(source)],
                             capture_output=True, text=True)
        compiled = Path(tmp) / "model_vela.tflite"
        summaries = list(Path(tmp).glob("model_summary_*.csv"))
        if run.returncode != 0 or not compiled.is_file() or not summaries:
            lines = [line.strip() for line in (run.stderr + run.stdout).splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {run.returncode}"
            raise EdgesegError(f"{path}: Vela cannot compile it ({reason})")
        estimate = _read_estimate(path, compiled, summaries[0], output)
        if output is not None:
            with atomic_path(Path(output)) as tmp_path:
                shutil.copyfile(compiled, tmp_path)
    return estimate


def _read_estimate(source: Path, compiled: Path, summary: Path, output: str | Path | None) -> VelaEstimate:
    from edgeseg.tflite.reader import VELA_CUSTOM_CODE, TFLiteFile

    with summary.open(newline="") as f:
        row = next(csv.DictReader(f))
    ops = Counter(op.type for op in TFLiteFile(compiled).ops)
    npu_ops = ops.pop(f"CUSTOM:{VELA_CUSTOM_CODE}", 0)
    return VelaEstimate(
        source=str(source), compiled=None if output is None else str(output),
        npu_ms=round(float(row["inference_time"]) * 1000, 2), cycles=int(float(row["cycles_total"])),
        sram_kib=round(float(row["sram_memory_used"]), 2), dram_kib=round(float(row["dram_memory_used"]), 2),
        macs=int(float(row["nn_macs"])), npu_ops=npu_ops, cpu_ops=dict(sorted(ops.items())),
        command=vela_command(source),
    )
