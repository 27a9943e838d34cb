"""Shared fixtures. Real data comes from ../shared (relative to the repo root), as in CI."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VOC_ROOT = SHARED / "voc" / "VOC2012"
MODELS = SHARED / "models"

os.environ.setdefault("EDGESEG_MIRROR", str(MODELS))
# Started in the background by a shell without job control (`nohup make test &`), the suite inherits SIGINT
# ignored, and so would every command it starts: the Ctrl-C tests need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Never write into the user's cache from tests.
os.environ["EDGESEG_HOME"] = tempfile.mkdtemp(prefix="edgeseg-test-home-")

if not VOC_ROOT.is_dir() or not MODELS.is_dir():
    raise pytest.UsageError(f"tests need the shared data at {SHARED} (see README)")


@pytest.fixture(autouse=True)
def _cwd_in_tmp(tmp_path_factory, monkeypatch):
    """Every test runs in its own empty folder: default outputs (predictions/, exports/, card_out/) never
    land in the checkout, whichever test forgets its -o."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def voc_root() -> Path:
    return VOC_ROOT


@pytest.fixture(scope="session")
def dm05_model():
    from edgeseg.zoo.build import create_model

    return create_model("deeplabv3_mnv2_dm05_voc").eval()


@pytest.fixture(scope="session")
def dm05_official() -> Path:
    from edgeseg.zoo.build import official_tflite

    return official_tflite("deeplabv3_mnv2_dm05_voc")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def classifier_tflite(tmp_path_factory) -> Path:
    """A real .tflite that is not a segmentation model (a tiny classifier), converted with litert-torch."""
    import litert_torch
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10)).eval()
    path = tmp_path_factory.mktemp("tflite") / "classifier.tflite"
    litert_torch.convert(model, (torch.zeros(1, 2, 2, 3),)).export(str(path))
    return path


@pytest.fixture(scope="session")
def dm05_exports(tmp_path_factory, dm05_model) -> dict[str, Path]:
    """The dm 0.5 model exported five ways: FP32; INT8 per-channel (argmax, uint8 pixels in); INT8 per-channel
    logits with int8 input; the i.MX 8M Plus preset (per-tensor uint8); the i.MX 93 preset (compiled by Vela).

    Calibrated on only 8 train images to keep the suite fast; accuracy checks use their own exports.
    """
    from edgeseg.data.voc import VOC_CLASSES
    from edgeseg.deploy.export import ExportOptions, export_tflite

    out = tmp_path_factory.mktemp("exports")
    variants = {
        "fp32": ExportOptions(precision="fp32"),
        "int8": ExportOptions(precision="int8", calib_root=VOC_ROOT, calib_count=8),
        "int8_logits": ExportOptions(precision="int8", output="logits", input="int8", calib_root=VOC_ROOT,
                                     calib_count=8),
        "imx8mp": ExportOptions(target="imx8mp", calib_root=VOC_ROOT, calib_count=8),
        "imx93": ExportOptions(target="imx93", calib_root=VOC_ROOT, calib_count=8),  # and imx93_vela.tflite
    }
    return {name: Path(export_tflite(dm05_model, VOC_CLASSES, out / f"{name}.tflite", opts)["file"])
            for name, opts in variants.items()}
