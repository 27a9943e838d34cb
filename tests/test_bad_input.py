"""The bad-input suite (issue 9): hostile or careless inputs, one test per defect class, parametrized by case.

Every case that must fail asserts exit code 2, that stderr holds exactly one `edgeseg: error:` line (progress
bars aside) and no traceback, and that nothing partial is left: no output folder the run created, no file of
an incomplete set, no hidden `.part` temp file. Inputs are built here: truncated, zero-byte, random-byte and
flipped-byte files, odd image modes, non-finite and absurd options, unwritable and full output locations,
and a writer killed with SIGKILL in the middle of a write. Fast: the official dm 0.5 file through LiteRT,
no exports.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeseg.cli import main
from edgeseg.errors import EdgesegError, EdgesegWarning

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "src" / "edgeseg" / "assets" / "voc_sized_500x375.jpg"
VOC_ROOT = REPO.parent / "shared" / "voc" / "VOC2012"
VAL_IDS = [line for line in (VOC_ROOT / "ImageSets" / "Segmentation" / "val.txt").read_text().split() if line][:2]
_PROGRESS = re.compile(r"\|\s*\d+/\d+ \[|^\s*(evaluate|check data)\b")


# Helpers ----------------------------------------------------------------------------------------------

def run(argv: list[str], capfd) -> tuple[int, str, str]:
    """Runs the CLI in-process; returns (exit code, stdout, stderr), stderr read at the file descriptor
    so that native libraries' output (LiteRT, XNNPACK) counts too."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capfd.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    """stderr lines other than progress-bar updates."""
    return [line for line in re.split(r"[\r\n]", err) if line.strip() and not _PROGRESS.search(line)]


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = error_lines(err)
    assert code == 2, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert len(lines) == 1 and re.match(r"edgeseg( [a-z]+)?: error: ", lines[0]), err  # argparse names the command
    for needle in needles:
        assert needle in lines[0], lines[0]


def leftovers(root: Path) -> list[str]:
    """Hidden temp files anywhere under root."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".part")
                  or ".part." in p.name)


def damage(data: bytes, how: str) -> bytes:
    """zero: no bytes; truncated: the first half; random: as many random bytes; flipped: one bit of the
    middle byte inverted."""
    if how == "zero":
        return b""
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "random":
        return np.random.default_rng(9).bytes(max(len(data), 4096))
    if how == "flipped":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x01
        return bytes(flipped)
    raise ValueError(how)


def photo_png(size: tuple[int, int] = (96, 72)) -> bytes:
    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize(size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def predict(dm05_official, tmp_path, capfd):
    """Calls `edgeseg predict INPUT... -o tmp/out` with the official dm 0.5 file; returns (code, out, err, out_dir)."""
    def call(*args, out: Path | None = None):
        out = out or tmp_path / "out"
        code, stdout, err = run(["predict", *args, "--tflite", dm05_official, "-o", out], capfd)
        return code, stdout, err, out

    return call


# 1. Damaged input and model files ------------------------------------------------------------------------

DAMAGE = ["zero", "truncated", "random", "flipped"]


# JPEG has no checksum: a flipped bit in its entropy-coded data is still an image, so no flipped JPEG.
@pytest.mark.parametrize("kind,how", [("png", how) for how in DAMAGE] + [("jpg", how) for how in DAMAGE[:3]])
def test_damaged_image(kind, how, predict, tmp_path):
    if kind == "jpg":
        buffer = io.BytesIO()
        Image.open(PHOTO).save(buffer, format="JPEG")
        data = buffer.getvalue()
    else:
        data = photo_png()
    bad = tmp_path / f"bad.{kind}"
    bad.write_bytes(damage(data, how))
    code, out, err, out_dir = predict(bad)
    assert_one_line_error(code, err, "bad.")
    assert not out_dir.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_tflite(how, predict, dm05_official, tmp_path, capfd):
    data = bytearray(dm05_official.read_bytes())
    if how == "flipped":  # inside the FlatBuffer's file identifier: a flip in the weights is undetectable
        data[4] ^= 0x01
        bad = bytes(data)
    else:
        bad = damage(bytes(data), how)
    model = tmp_path / "model.tflite"
    model.write_bytes(bad)
    out_dir = tmp_path / "out"
    code, _, err = run(["predict", PHOTO, "--tflite", model, "-o", out_dir], capfd)
    assert_one_line_error(code, err, "model.tflite")
    assert not out_dir.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_official_file_in_mirror(how, dm05_official, tmp_path, monkeypatch, capfd):
    """A zoo model's official file is checked against its sha256: a damaged copy is refused in one line."""
    mirror, home = tmp_path / "mirror", tmp_path / "home"
    mirror.mkdir()
    (mirror / dm05_official.name).write_bytes(damage(dm05_official.read_bytes(), how))
    monkeypatch.setenv("EDGESEG_MIRROR", str(mirror))
    monkeypatch.setenv("EDGESEG_HOME", str(home))
    out_dir = tmp_path / "out"
    code, _, err = run(["predict", PHOTO, "--model", "deeplabv3_mnv2_dm05_voc", "-o", out_dir], capfd)
    assert_one_line_error(code, err, "checksum mismatch", dm05_official.name)
    assert not out_dir.exists() and not leftovers(tmp_path)


@pytest.fixture(scope="session")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    """A valid fine-tuned checkpoint (the pretrained dm 0.5 weights with checkpoint metadata)."""
    from edgeseg.data.voc import VOC_CLASSES
    from edgeseg.zoo.build import pretrained_state_dict, save_verified
    from edgeseg.zoo.registry import get_entry

    state = pretrained_state_dict(get_entry("deeplabv3_mnv2_dm05_voc"))
    path = tmp_path_factory.mktemp("checkpoint") / "good.safetensors"
    save_verified(state, path, {"edgeseg_base": "deeplabv3_mnv2_dm05_voc",
                                           "class_names": json.dumps(list(VOC_CLASSES))})
    return path.read_bytes()


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_checkpoint(how, checkpoint_bytes, tmp_path, capfd):
    data = bytearray(checkpoint_bytes)
    if how == "flipped":  # a bit inside the tensor data (the header is read first, the digest catches this)
        data[-1000] ^= 0x01
        bad = bytes(data)
    else:
        bad = damage(checkpoint_bytes, how)
    ckpt = tmp_path / "tuned.safetensors"
    ckpt.write_bytes(bad)
    out_dir = tmp_path / "out"
    code, _, err = run(["predict", PHOTO, "--weights", ckpt, "--backend", "torch", "-o", out_dir], capfd)
    assert_one_line_error(code, err, "tuned.safetensors")
    assert not out_dir.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_weights_cache_is_rebuilt(how, checkpoint_bytes, tmp_path, monkeypatch, capfd):
    """The imported-weights cache is derived: a damaged one is rebuilt from the verified official file,
    with one warning line, and the rebuilt cache verifies."""
    from edgeseg.zoo.build import pretrained_state_dict, read_verified
    from edgeseg.zoo.registry import get_entry

    entry = get_entry("deeplabv3_mnv2_dm05_voc")
    home = tmp_path / "home"
    monkeypatch.setenv("EDGESEG_HOME", str(home))
    good = pretrained_state_dict(entry)  # builds the cache in the fresh home
    capfd.readouterr()
    (cached,) = home.glob("*.safetensors")
    data = bytearray(cached.read_bytes())
    if how == "flipped":
        data[-1000] ^= 0x01
        cached.write_bytes(bytes(data))
    else:
        cached.write_bytes(damage(bytes(data), how))
    with pytest.warns(EdgesegWarning, match="rebuilding the weights cache") as caught:
        state = pretrained_state_dict(entry)
    assert len(caught) == 1 and capfd.readouterr().err == ""  # a warning, not printed by the library
    assert all(np.array_equal(state[k].numpy(), good[k].numpy()) for k in good)
    read_verified(cached)  # verifies now
    assert not leftovers(home)


# 2. Odd image modes and quiet wrong input ----------------------------------------------------------------

def _grey(size=(96, 72)) -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("L").resize(size))


def _write_mode(path: Path, mode: str) -> None:
    grey = _grey()
    if mode == "F_unit":
        Image.fromarray(grey.astype(np.float32) / 255, "F").save(path)
    elif mode == "F_255":
        Image.fromarray(grey.astype(np.float32), "F").save(path)
    elif mode == "I;16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(path)  # 16-bit PNG
    elif mode == "CMYK":
        Image.fromarray(grey).convert("RGB").convert("CMYK").save(path)
    elif mode == "P":
        Image.fromarray(grey).convert("RGB").quantize(256).save(path)
    elif mode == "1":
        Image.fromarray(grey).convert("1").save(path)
    else:
        raise ValueError(mode)


@pytest.mark.parametrize("mode,suffix", [("F_unit", "tif"), ("F_255", "tif"), ("I;16", "png"),
                                         ("CMYK", "jpg"), ("P", "png"), ("1", "png")])
def test_odd_image_mode_is_read_by_its_range(mode, suffix, predict, tmp_path):
    """Accepted modes give both outputs; float and 16-bit greyscale are read as the same 8-bit image
    (a 0..1 float TIFF used to come out black, labelled "background 100%")."""
    path = tmp_path / f"odd.{suffix}"
    _write_mode(path, mode)
    code, out, err, out_dir = predict(path)
    assert code == 0, err
    assert "Traceback" not in err and not error_lines(err), err
    labels = np.asarray(Image.open(out_dir / "odd_labels.png"))
    assert (out_dir / "odd_overlay.png").is_file() and not leftovers(tmp_path)
    if mode in ("F_unit", "F_255", "I;16"):
        reference = tmp_path / "ref.png"
        Image.fromarray(_grey()).save(reference)
        assert predict(reference, out=tmp_path / "ref_out")[0] == 0
        assert np.array_equal(labels, np.asarray(Image.open(tmp_path / "ref_out" / "ref_labels.png")))


@pytest.mark.parametrize("values,needle", [
    ("nan", "NaN or infinite"), ("inf", "NaN or infinite"), ("negative", "expected 0..1 or 0..255"),
    ("above_255", "expected 0..1 or 0..255"), ("int32_negative", "expected 0..255 or 16-bit"),
])
def test_float_image_out_of_range_is_refused(values, needle, predict, tmp_path):
    grey = _grey().astype(np.float32)
    path = tmp_path / "odd.tif"
    if values == "nan":
        grey[3, 4] = np.nan
    elif values == "inf":
        grey[3, 4] = np.inf
    elif values == "negative":
        grey -= 10
    elif values == "above_255":
        grey *= 1000
    if values == "int32_negative":
        Image.fromarray(grey.astype(np.int32) - 100, "I").save(path)
    else:
        Image.fromarray(grey, "F").save(path)
    code, _, err, out_dir = predict(path)
    assert_one_line_error(code, err, "odd.tif", needle)
    assert not out_dir.exists() and not leftovers(tmp_path)


def test_float_arrays_are_refused_by_the_api():
    from edgeseg.api import as_rgb

    with pytest.raises(EdgesegError, match="pass uint8 pixels"):
        as_rgb(np.zeros((4, 4, 3), dtype=np.float32))


# 3. Non-finite and absurd options ------------------------------------------------------------------------

OPTIONS = [
    ["predict", "x.jpg", "--threads", "nan"], ["predict", "x.jpg", "--threads", "100000"],
    ["predict", "x.jpg", "--threads", "-1"], ["predict", "x.jpg", "--every", "inf"],
    ["predict", "x.jpg", "--every", "0"], ["predict", "x.jpg", "--max-frames", "1e99"],
    ["predict", "x.jpg", "--max-frames", str(2**70)],
    ["evaluate", "--data", "x", "--limit", "-1"], ["evaluate", "--data", "x", "--threads", "inf"],
    ["benchmark", "x.tflite", "--warmup=-1"], ["benchmark", "x.tflite", "--runs", "nan"],
    ["benchmark", "x.tflite", "--threads", "1,100000"], ["benchmark", "x.tflite", "--threads", "nan"],
    ["export", "--calib-count", "nan"], ["export", "--precision", "fp32", "--input-size", "40000"],
    ["export", "--precision", "fp32", "--input-size", "nan"],
    ["card", "--data", "x", "--limit", "0"],
    ["predict", "x.jpg", "--input-size", "nan"], ["evaluate", "--data", "x", "--input-size", "9x9"],
]


@pytest.mark.parametrize("argv", OPTIONS, ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_absurd_option_is_one_line(argv, capfd, tmp_path):
    code, _, err = run(argv, capfd)
    assert_one_line_error(code, err)
    assert "usage" not in err and len(err) < 300  # no list of 1,000 choices
    assert re.search(r"\d+\.\.\d+|N or HxW", err), err  # the range is named
    assert list(Path.cwd().iterdir()) == []  # nothing written (the test runs in an empty folder)


# 4. Unwritable and full output locations -----------------------------------------------------------------

def _can_mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return result.returncode == 0


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 64 KiB tmpfs where the test may mount one; elsewhere a folder where every write beyond 64 KiB
    raises ENOSPC (Pillow's and Python's file writes patched)."""
    disk = tmp_path / "disk"
    if _can_mount(disk, "size=64k"):
        yield disk
        subprocess.run(["umount", "-l", str(disk)], check=False)
        return
    disk.mkdir()
    real_save = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if str(fp).startswith(str(disk)):
            buffer = io.BytesIO()
            real_save(self, buffer, *args, **kwargs)
            if buffer.tell() > 64 * 1024:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    real_write_text = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if str(self).startswith(str(disk)) and len(data) > 64 * 1024:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    yield disk


@pytest.fixture
def read_only(tmp_path):
    """A folder nothing can be written in: a read-only tmpfs as root, else mode 0500."""
    folder = tmp_path / "ro"
    if _can_mount(folder, "ro,size=64k"):
        yield folder
        subprocess.run(["umount", "-l", str(folder)], check=False)
        return
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):
        pytest.skip("cannot make a read-only folder here")
    yield folder
    folder.chmod(0o700)


def test_full_disk_predict_leaves_no_half_set(small_disk, predict, tmp_path):
    """The label map fits on the disk, the overlay does not: neither is left (no label map without its
    overlay), nor a temp file, nor the output folder the run created."""
    photo = tmp_path / "photo.png"
    Image.open(PHOTO).save(photo)
    code, _, err, out_dir = predict(photo, out=small_disk / "out")
    assert_one_line_error(code, err, "No space left on device")
    assert not (small_disk / "out").exists() and not leftovers(small_disk)


def test_full_disk_predict_of_a_folder_keeps_whole_sets(small_disk, predict, tmp_path):
    """A small image fits, a large one does not: the small one's pair is kept, the large one has nothing."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(PHOTO).resize((24, 18)).save(photos / "a_small.png")
    Image.open(PHOTO).save(photos / "b_large.png")
    code, _, err, _ = predict(photos, out=small_disk / "out")
    lines = error_lines(err)
    assert code == 2 and "Traceback" not in err and lines[-1] == "edgeseg: error: 1 of 2 images could not be read"
    assert sorted(p.name for p in (small_disk / "out").iterdir()) == ["a_small_labels.png", "a_small_overlay.png"]
    assert not leftovers(small_disk)


def test_full_disk_evaluate_json(small_disk, dm05_official, tmp_path, capfd, monkeypatch):
    """The JSON report does not fit: one line, no partial JSON (the report is padded past 64 KiB)."""
    from edgeseg.evaluation import evaluate as evaluate_module

    real = evaluate_module.EvalResult.to_dict
    monkeypatch.setattr(evaluate_module.EvalResult, "to_dict", lambda self: {**real(self), "pad": "x" * 100_000})
    report = small_disk / "report" / "r.json"
    code, _, err = run(["evaluate", "--data", VOC_ROOT, "--limit", "1", "--tflite", dm05_official,
                        "--json", report], capfd)
    assert_one_line_error(code, err, "r.json")
    assert not report.exists() and not leftovers(small_disk)


@pytest.mark.parametrize("where", ["read_only", "a_file", "under_a_file"])
def test_unwritable_output_location(where, predict, tmp_path, request):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    if where == "read_only":
        out = request.getfixturevalue("read_only") / "out"
    else:
        out = {"a_file": blocker, "under_a_file": blocker / "out"}[where]
    code, _, err, _ = predict(PHOTO, out=out)
    assert_one_line_error(code, err)
    assert blocker.read_text() == "a file" and not leftovers(tmp_path)


# 5. Kill -9 in the middle of a write ---------------------------------------------------------------------

WRITER = """
import sys, time
from edgeseg.io.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"new" * 100_000)
        f.flush()
        print("writing", flush=True)
        time.sleep(60)
"""


@pytest.mark.parametrize("before", ["absent", "old_file"])
def test_kill9_mid_write_leaves_old_file_and_next_run_cleans_up(before, tmp_path):
    target = tmp_path / "state.pt"
    if before == "old_file":
        target.write_bytes(b"old complete file")
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    if before == "absent":
        assert not target.exists()
    else:
        assert target.read_bytes() == b"old complete file"
    assert len(leftovers(tmp_path)) == 1  # the killed writer's temp file ...
    from edgeseg.io.files import atomic_path

    with atomic_path(target) as tmp:  # ... is removed by the next successful write
        tmp.write_bytes(b"next run")
    assert target.read_bytes() == b"next run" and leftovers(tmp_path) == []


def test_kill9_of_predict_then_rerun(dm05_official, tmp_path):
    """A predict killed while writing leaves no partial pair; the next run completes and leaves no temp file."""
    out = tmp_path / "out"
    code = f"""
import sys
from PIL import Image
real = Image.Image.save
def save(self, fp, *a, **k):
    real(self, fp, *a, **k)
    if "_overlay." in str(fp) and str(fp).endswith(".part"):
        print("writing", flush=True)
        import time; time.sleep(60)
Image.Image.save = save
from edgeseg.cli import main
main(["predict", {str(PHOTO)!r}, "--tflite", {str(dm05_official)!r}, "-o", {str(out)!r}])
"""
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert child.stdout.readline().strip() == "writing"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert not list(out.glob("*.png"))  # neither of the pair
    assert main(["predict", str(PHOTO), "--tflite", str(dm05_official), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["voc_sized_500x375_labels.png", "voc_sized_500x375_overlay.png"]


# 6. Datasets: --skip-bad, missing files, label ranges, EXIF orientation ----------------------------------

@pytest.fixture
def tiny_voc(tmp_path) -> Path:
    """Two real VOC val pairs in a VOCdevkit layout of their own."""
    root = tmp_path / "VOC"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for i in VAL_IDS:
        shutil.copy(VOC_ROOT / "JPEGImages" / f"{i}.jpg", root / "JPEGImages")
        shutil.copy(VOC_ROOT / "SegmentationClass" / f"{i}.png", root / "SegmentationClass")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(VAL_IDS) + "\n")
    return root


def _break(root: Path, defect: str, sample: str) -> None:
    image, mask = root / "JPEGImages" / f"{sample}.jpg", root / "SegmentationClass" / f"{sample}.png"
    if defect == "missing_mask":
        mask.unlink()
    elif defect == "missing_image":  # a listed id with no image
        image.unlink()
    elif defect == "zero_mask":
        mask.write_bytes(b"")
    elif defect == "truncated_image":
        image.write_bytes(image.read_bytes()[:500])
    elif defect == "label_out_of_range":
        values = np.asarray(Image.open(mask)).copy()
        values[0, 0] = 42
        broken = Image.fromarray(values, "P")
        broken.putpalette(Image.open(mask).getpalette())
        broken.save(mask)
    elif defect == "exif_mismatch":  # the image says "rotate 180", the mask has no orientation
        exif = Image.Exif()
        exif[0x0112] = 3
        Image.open(image).save(image, exif=exif.tobytes())
    else:
        raise ValueError(defect)


DATA_DEFECTS = ["missing_mask", "missing_image", "zero_mask", "truncated_image", "label_out_of_range",
                "exif_mismatch"]


@pytest.mark.parametrize("defect", DATA_DEFECTS)
def test_bad_pair_stops_evaluate_in_one_line(defect, tiny_voc, dm05_official, tmp_path, capfd):
    _break(tiny_voc, defect, VAL_IDS[1])
    report = tmp_path / "reports" / "r.json"
    code, out, err = run(["evaluate", "--data", tiny_voc, "--tflite", dm05_official, "--json", report], capfd)
    assert_one_line_error(code, err, VAL_IDS[1])
    assert not report.parent.exists() and "mIoU" not in out and not leftovers(tmp_path)  # nor the new folder


@pytest.mark.parametrize("defect", DATA_DEFECTS)
def test_skip_bad_skips_every_kind_of_bad_pair(defect, tiny_voc, dm05_official, tmp_path, capfd):
    _break(tiny_voc, defect, VAL_IDS[1])
    report = tmp_path / "r.json"
    code, out, err = run(["evaluate", "--data", tiny_voc, "--tflite", dm05_official, "--skip-bad",
                          "--json", report], capfd)
    assert code == 0, err
    assert "Traceback" not in err and "RuntimeWarning" not in err
    assert [line for line in error_lines(err) if not line.startswith("warning: skipped ")] == []
    result = json.loads(report.read_text())
    assert result["num_images"] == 1 and result["skipped"] == [VAL_IDS[1]] and result["miou"] is not None


@pytest.mark.parametrize("defect", ["missing_mask", "missing_image", "zero_mask"])
def test_skip_bad_with_nothing_left_is_an_error(defect, tiny_voc, dm05_official, tmp_path, capfd):
    for sample in VAL_IDS:
        _break(tiny_voc, defect, sample)
    report = tmp_path / "r.json"
    code, out, err = run(["evaluate", "--data", tiny_voc, "--tflite", dm05_official, "--skip-bad",
                          "--json", report], capfd)
    lines = [line for line in error_lines(err) if not line.startswith("warning: skipped ")]
    assert code == 2 and "Traceback" not in err and "RuntimeWarning" not in err
    assert len(lines) == 1 and "no image evaluated, all 2 skipped" in lines[0]
    assert not report.exists() and "miou" not in out.lower()


def test_exif_orientation_applied_to_image_and_mask_alike(tiny_voc, dm05_official, capfd):
    """Image and mask both tagged "rotate 180": both turned, the score is the untagged one."""
    args = ["evaluate", "--data", tiny_voc, "--tflite", dm05_official, "--limit", "1"]
    code, plain, _ = run(args, capfd)
    assert code == 0
    sample = VAL_IDS[0]
    image, mask = tiny_voc / "JPEGImages" / f"{sample}.jpg", tiny_voc / "SegmentationClass" / f"{sample}.png"
    exif = Image.Exif()
    exif[0x0112] = 3
    with Image.open(image) as img:
        img.transpose(Image.Transpose.ROTATE_180).save(image, exif=exif.tobytes(), quality=100)
    with Image.open(mask) as m:
        m.transpose(Image.Transpose.ROTATE_180).save(mask, exif=exif.tobytes())
    code, rotated, err = run(args, capfd)
    assert code == 0, err
    miou = [re.search(r"mIoU\s+([\d.]+)", text).group(1) for text in (plain, rotated)]
    assert abs(float(miou[0]) - float(miou[1])) < 2.0  # same pixels up to JPEG re-encoding


def test_one_label_range_check():
    """Evaluation, ConfusionMatrix.update and the training data check share one function."""
    from edgeseg.evaluation.metrics import ConfusionMatrix, LabelRangeError, check_label_range

    mask = np.array([[0, 20, 255], [21, 42, 3]], dtype=np.uint8)
    with pytest.raises(LabelRangeError, match=r"m\.png: labels \[21, 42\] outside 0\.\.20 \(and 255 = ignore\)"):
        check_label_range(mask, 21, "m.png")
    with pytest.raises(EdgesegError, match=r"labels \[21, 42\]"):
        ConfusionMatrix(21).update(mask, np.zeros_like(mask))
    check_label_range(mask, 43)


# 7. Training: absurd options, damaged run folders, non-finite weights, killed writes ----------------------

@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    """A VOCdevkit folder linking 2 train and 1 val images of the shared set."""
    root = tmp_path_factory.mktemp("trainvoc")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClass"):
        (root / name).symlink_to(VOC_ROOT / name)
    ids = {split: (VOC_ROOT / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
           for split in ("train", "val")}
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids["train"][:2]) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text(ids["val"][0] + "\n")
    return root


def _train_args(data: Path, out: Path, *extra) -> list:
    return ["train", "--no-progress", "--data", data, "--classes", "background,person", "--crop", 65,
            "--batch-size", 2, "--max-steps", 1, "--val-limit", 1, "--epochs", 1, "--lr", 0.001, "--workers", 0,
            "--out", out, *extra]


TRAIN_OPTIONS = [("--momentum", "nan"), ("--momentum", "1.5"), ("--momentum", "-1"), ("--lr", "nan"),
                 ("--lr", "inf"), ("--lr", "0"), ("--lr", "1e9"), ("--weight-decay", "inf"),
                 ("--seed", str(2**70)), ("--seed", "-1"), ("--crop", "40000"), ("--crop", "10"),
                 ("--epochs", "0"), ("--epochs", str(10**12)), ("--batch-size", "100000"), ("--max-steps", "0"),
                 ("--val-limit", "-5"), ("--workers", "100000")]


@pytest.mark.parametrize("option,value", TRAIN_OPTIONS, ids=[" ".join(o) for o in TRAIN_OPTIONS])
def test_absurd_train_option(option, value, train_data, tmp_path, capfd):
    out = tmp_path / "run"
    code, _, err = run([*_train_args(train_data, out), option, value], capfd)  # the last occurrence counts
    assert_one_line_error(code, err, option)
    assert re.search(r"\d\.\.\d|[\[(][\d.e+-]+, [\d.e+-]+[\])]", err), err  # the range is named
    assert not out.exists()


@pytest.mark.parametrize("config", ["lacks_keys", "a_list", "nan_lr", "not_json"])
def test_resume_with_a_bad_config_json(config, train_data, tmp_path, capfd):
    from edgeseg.training.config import TrainConfig

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "state.pt").write_bytes(b"not read: the config fails first")
    good = TrainConfig(data=str(train_data), classes="background,person", lr=0.001).to_json()
    text = {"lacks_keys": json.dumps({"data": str(train_data)}), "a_list": "[]",
            "nan_lr": json.dumps({**good, "lr": float("nan")}), "not_json": "{"}[config]
    (run_dir / "config.json").write_text(text)
    code, _, err = run(["train", "--no-progress", "--resume", run_dir], capfd)
    assert_one_line_error(code, err, "config.json")
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "state.pt"]


def test_non_finite_weights_are_never_saved(train_data, tmp_path, capfd, monkeypatch):
    """An optimizer step that leaves NaN in the weights (as --momentum nan did): the run stops in one line
    naming the last good epoch, and no checkpoint or state of that epoch is written."""
    import torch

    real_step = torch.optim.SGD.step

    def poisoned(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", poisoned)
    out = tmp_path / "run"
    code, _, err = run(_train_args(train_data, out), capfd)
    assert_one_line_error(code, err, "not finite", "no epoch finished with finite weights")
    assert not {"last.safetensors", "best.safetensors", "state.pt"} & {p.name for p in out.iterdir()}
    assert not leftovers(tmp_path)


def test_a_run_removes_temp_files_of_a_killed_run(tmp_path):
    """`.state.*.pt.part` left by a kill during the state.pt write goes with the next state.pt written
    (the run folder's writes go through files.atomic_path, like every other output)."""
    from edgeseg.training.checkpoints import save_state

    out = tmp_path / "run"
    out.mkdir()
    for path in (out / ".state.999999.abcdefgh.pt.part", out / ".state.abcdefgh.pt.part"):
        path.write_bytes(b"half a file")
    save_state(out / "state.pt", {"epoch": 1})
    assert sorted(p.name for p in out.iterdir()) == ["state.pt"]


# Round 3 (issue 20) --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["litert", "torch"])
def test_one_segmenter_called_from_threads_gives_the_sequential_results(backend):
    # A web server's worker threads share one Segmenter: every call must give its own image's labels, with
    # no error, exactly as calls one after another do (LiteRT's interpreter holds one input and one output).
    from concurrent.futures import ThreadPoolExecutor

    import edgeseg

    seg = edgeseg.Segmenter("deeplabv3_mnv2_dm05_voc", backend=backend)
    images = [np.asarray(Image.open(VOC_ROOT / "JPEGImages" / f"{i}.jpg").convert("RGB")) for i in VAL_IDS]
    images += [np.ascontiguousarray(image[::-1]) for image in images]  # four different images
    sequential = [seg(image).labels for image in images]
    calls = images * (4 if backend == "litert" else 1)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda image: seg(image).labels, calls))
    for index, labels in enumerate(results):
        assert np.array_equal(labels, sequential[index % len(images)])


def test_a_run_folder_is_locked_for_the_whole_run(train_data, tmp_path, capfd):
    # Two runs into one folder (or a --resume of a run still training) would mix config.json and state.pt.
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from edgeseg.training.checkpoints import run_folder_lock\n"
         "with run_folder_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        code, _, err = run(_train_args(train_data, out), capfd)
        assert_one_line_error(code, err, f"{out} is in use by another training run (pid {holder.pid})")
        assert not (out / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # A holder killed with SIGKILL leaves its lock file but not its lock; a run that never reached its first
    # checkpoint still blocks the folder, by name.
    (out / "config.json").write_text("{}")
    code, _, err = run(_train_args(train_data, out), capfd)
    assert_one_line_error(code, err, "stopped before its first checkpoint")


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny real .tflite files that are not segmentation models edgeseg can run: a float [1, H, W] map (depth,
    saliency) and 300-class logits."""
    import litert_torch
    import torch

    class Depth(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=-1)

    class Logits300(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 300, 1)

        def forward(self, x):
            return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    out = tmp_path_factory.mktemp("odd")
    paths = {}
    for name, model in {"depth": Depth(), "classes300": Logits300()}.items():
        paths[name] = out / f"{name}.tflite"
        litert_torch.convert(model.eval(), (torch.zeros(1, 33, 33, 3),)).export(str(paths[name]))
    return paths


@pytest.mark.parametrize("name, needle", [("depth", "is not a label map"), ("classes300", "at most 255")])
def test_models_whose_output_is_not_labels_edgeseg_can_hold_are_refused(odd_models, name, needle, capfd):
    code, out, err = run(["predict", PHOTO, "--tflite", odd_models[name], "-o", "out"], capfd)
    assert_one_line_error(code, err, needle)
    assert not Path("out").exists()


def test_labels_beyond_8_bits_are_refused_not_wrapped():
    from edgeseg.pipeline import restore_size

    with pytest.raises(EdgesegError, match="predicted class 280"):
        restore_size(np.full((4, 4), 280, np.int64), 8, 8)
    assert restore_size(np.full((4, 4), 20, np.int64), 4, 4).dtype == np.uint8


@pytest.mark.parametrize("bad, needle", [(np.zeros((5, 0), np.uint8), "empty image"),
                                         (np.zeros((0, 5, 3), np.uint8), "empty image")])
def test_empty_arrays_are_one_error(bad, needle):
    import edgeseg

    with pytest.raises(EdgesegError, match=needle):
        edgeseg.Segmenter()(bad)


@pytest.mark.parametrize("threads", ["2", 2.0, True, 0])
def test_segmenter_threads_must_be_a_whole_number(threads):
    import edgeseg

    with pytest.raises(EdgesegError, match="threads must be a whole number"):
        edgeseg.Segmenter(threads=threads)


@pytest.mark.parametrize("classes, needle", [("3.0", "a class count is a whole number"), ("300", "at most 255")])
def test_train_class_counts_name_the_real_problem(classes, needle, train_data, tmp_path, capfd):
    code, _, err = run([*_train_args(train_data, tmp_path / "run"), "--classes", classes], capfd)
    assert_one_line_error(code, err, needle)


def test_a_class_map_with_a_string_of_classes_is_refused(tmp_path, capfd):
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"dataset_classes": "road", "mapping": {"road": "road"}}))
    code, _, err = run(["evaluate", "--data", VOC_ROOT, "--limit", 1, "--class-map", bad], capfd)
    assert_one_line_error(code, err, "dataset_classes must be a list")


def test_evaluate_refuses_a_model_of_other_classes(tmp_path, capfd):
    # The Cityscapes model on VOC data: 19 classes against VOC's 21, an error naming both, not a score.
    code, _, err = run(["evaluate", "--data", VOC_ROOT, "--limit", 1, "--model",
                        "deeplab_edgetpu_slim_cityscapes"], capfd)
    assert_one_line_error(code, err, "the data's 21 classes", "model's 19", "--class-map")
    # A folder that lists its classes in classes.txt is checked the same way (the VOC model on road scenes).
    data = tmp_path / "roads"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.open(PHOTO).save(data / "images" / "a.jpg")
    Image.fromarray(np.zeros((375, 500), np.uint8)).save(data / "masks" / "a.png")
    (data / "classes.txt").write_text("road\nsky\ncar\n")
    code, _, err = run(["evaluate", "--data", data, "--split", "all"], capfd)
    assert_one_line_error(code, err, "the data's 3 classes (road, sky, car)")


@pytest.mark.parametrize("case", ["folder_into_itself", "video_overlay_beside", "json_onto_photo"])
def test_outputs_never_replace_an_input_of_the_run(case, tmp_path, capfd):
    folder = tmp_path / "ip"
    folder.mkdir()
    shutil.copy(PHOTO, folder / "a.jpg")
    if case == "folder_into_itself":  # the user's own a_labels.png beside a.jpg
        shutil.copy(PHOTO, folder / "a_labels.png")
        argv, kept = ["predict", folder, "-o", folder], folder / "a_labels.png"
    elif case == "video_overlay_beside":
        (folder / "v.mp4").write_bytes(b"user's video")
        (folder / "v_overlay.mp4").write_bytes(b"user's own overlay")
        argv, kept = ["predict", folder / "v.mp4", folder / "v_overlay.mp4", "-o", folder], folder / "v_overlay.mp4"
    else:
        argv, kept = ["predict", folder / "a.jpg", "-o", tmp_path / "out", "--json", folder / "a.jpg"], folder / "a.jpg"
    before = kept.read_bytes()
    code, _, err = run(argv, capfd)
    assert_one_line_error(code, err, "is an input of this run")
    assert kept.read_bytes() == before


def test_standard_input_is_read_with_a_cap(tmp_path):
    # `cat /dev/zero | edgeseg predict -` stops at the cap with one line, not a MemoryError.
    result = subprocess.run(f"head -c {300 * 2**20} /dev/zero | {sys.executable} -m edgeseg.cli predict - -o "
                            f"{tmp_path / 'out'}", shell=True, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "more than 256 MiB" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", [["--split", "val"], ["--calib-count", "3"], ["--weight-ranges", "minmax"]])
def test_fp32_export_refuses_calibration_options_it_would_ignore(flag, tmp_path, capfd):
    code, _, err = run(["export", "--precision", "fp32", *flag, "-o", tmp_path / "m.tflite"], capfd)
    assert_one_line_error(code, err, flag[0], "int8 only")


def test_card_rejects_a_malformed_class_map_before_any_export(tmp_path, capfd):
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"dataset_classes": ["road", "car"], "mapping": {"no such class": "road"}}))
    out = tmp_path / "card"
    code, _, err = run(["card", "--data", VOC_ROOT, "--model", "deeplab_edgetpu_slim_cityscapes", "--class-map", bad,
                        "-o", out], capfd)
    assert code == 2 and "Traceback" not in err
    assert not list(out.glob("*.tflite"))


# Reliability, round 3: folders, Ctrl-C, wrong-cause messages ----------------------------------------------

def _small_photo(path: Path) -> None:
    Image.open(PHOTO).resize((64, 48)).save(path)


def test_recursive_follows_symlinked_folders_and_stops_at_loops(predict, tmp_path):
    # Path.glob("**/*") skipped symlinked subfolders: their images were left out without a word.
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    (photos / "day").mkdir(parents=True)
    elsewhere.mkdir()
    for path in (photos / "a.jpg", photos / "day" / "b.jpg", elsewhere / "c.jpg"):
        _small_photo(path)
    (photos / "linked").symlink_to(elsewhere, target_is_directory=True)
    (photos / "day" / "back").symlink_to(photos, target_is_directory=True)  # a loop: nothing new below it
    code, _, err, out = predict(photos, "--recursive")
    assert code == 0, err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*_overlay.png")) == [
        "a_overlay.png", "day/b_overlay.png", "linked/c_overlay.png"]


@pytest.mark.parametrize("locked, recursive", [("photos/locked", True), ("photos", False)])
def test_a_folder_that_cannot_be_read_is_one_line_before_any_work(locked, recursive, predict, tmp_path,
                                                                   monkeypatch):
    # An unreadable subfolder was skipped without a word (and an unreadable folder had "no images in it").
    # Tests run as root, where chmod 000 denies nothing: os.scandir fails for that folder as for another user.
    photos = tmp_path / "photos"
    (photos / "locked").mkdir(parents=True)
    _small_photo(photos / "a.jpg")
    _small_photo(photos / "locked" / "b.jpg")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == tmp_path / locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    code, _, err, out = predict(photos, *(["--recursive"] if recursive else []))
    assert_one_line_error(code, err, f"{tmp_path / locked}: cannot read this folder (Permission denied)")
    assert not out.exists()


def test_import_edgeseg_loads_nothing_heavy():
    # So the command's Ctrl-C handling is in place before numpy, Pillow and LiteRT load (PEP 562 in __init__).
    probe = subprocess.run([sys.executable, "-c", "import sys, edgeseg; print(sorted(m for m in ('numpy', 'PIL', "
                            "'ai_edge_litert', 'torch') if m in sys.modules)); print(edgeseg.Segmenter.__name__)"],
                           capture_output=True, text=True)
    assert probe.stdout.split("\n")[:2] == ["[]", "Segmenter"], probe.stderr


@pytest.mark.parametrize("when", ["while numpy loads", "after 1 s"])
def test_ctrl_c_at_any_point_is_one_line(when, tmp_path):
    # Ctrl-C in the first 0.2 s, while numpy, Pillow and LiteRT load, printed a traceback.
    import time

    child = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "predict", "-", "-o", str(tmp_path / "out")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if when == "after 1 s":  # by then reading the image on standard input, which never comes
            time.sleep(1)
        else:
            maps, deadline = Path(f"/proc/{child.pid}/maps"), time.monotonic() + 30
            while "numpy" not in maps.read_text() and time.monotonic() < deadline:
                time.sleep(0.001)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130 and "Traceback" not in err, err
    assert error_lines(err) == ["edgeseg: interrupted"], err
    assert not (tmp_path / "out").exists()


def _tiny_clip(path: Path, frames: int = 4) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            pixels = np.full((48, 64, 3), 40 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_every_beyond_the_clip_keeps_its_first_frame_for_the_whole_clip(predict, tmp_path):
    # --every 10000000 was "cannot write video ... (invalid argument)": a frame rate of fps/every. Frames now keep
    # their own times: the one frame kept is shown for the whole clip.
    av = pytest.importorskip("av")
    clip = tmp_path / "clip.mp4"
    _tiny_clip(clip)
    code, _, err, out = predict(clip, "--every", "10000000", "--no-progress")
    assert code == 0 and not error_lines(err), err
    with av.open(str(out / "clip_overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert len(list(container.decode(stream))) == 1
        assert float(stream.duration * stream.time_base) == pytest.approx(0.4, abs=0.01)


@pytest.mark.parametrize("argv, needles", [
    (["--camera", ""], ["--camera", "the camera name is empty"]),
    (["--camera", " "], ["--camera", "the camera name is empty"]),
    (["x.mp4", "--max-frames", "0"], ["--max-frames", "1..1000000000"]),
])
def test_video_options_say_what_is_wrong(argv, needles, capfd):
    # `--camera ""` was ".: a folder, not a video" (the empty name read as the current folder).
    code, _, err = run(["predict", *argv], capfd)
    assert_one_line_error(code, err, *needles)
    assert list(Path.cwd().iterdir()) == []


@pytest.mark.parametrize("options, needle", [
    ({"max_frames": 0}, "max_frames must be a whole number of at least 1, got 0"),
    ({"max_frames": 2.5}, "max_frames must be a whole number of at least 1, got 2.5"),
    ({"every": 0}, "every must be a whole number of at least 1, got 0"),
])
def test_stream_options_are_checked_when_called(options, needle):
    # Segmenter.stream(src, max_frames=0) was "no frame could be decoded", at the first frame.
    import edgeseg

    seg = edgeseg.Segmenter()
    with pytest.raises(EdgesegError, match=re.escape(needle)):
        seg.stream("no_such_clip.mp4", **options)  # checked before the file is opened
    from edgeseg.io.video import open_video

    with pytest.raises(EdgesegError, match="the camera name is empty"):
        open_video("", camera=True)
    with pytest.raises(EdgesegError, match="the video path is empty"):
        open_video("")


def test_a_closed_image_is_named_as_closed():
    # A closed PIL image was "image mode RGB cannot be read as RGB".
    import edgeseg

    seg = edgeseg.Segmenter()
    with Image.open(PHOTO) as img:
        pass
    for image in (img, Image.new("F", (8, 8))):
        image.close()
        with pytest.raises(EdgesegError, match=r"^the image is closed \(Image.close\(\) was called"):
            seg(image)
    assert seg(Image.new("RGB", (8, 8))).labels.shape == (8, 8)


def test_a_teacher_with_the_same_classes_in_another_order_maps_by_name():
    # A --teacher checkpoint whose classes were the student's in another order "cannot be mapped".
    from edgeseg.training.distill import teacher_class_map

    names = ("background", "person", "car")
    assert teacher_class_map("t.safetensors", ("car", "background", "person"), names, "voc").tolist() == [2, 0, 1]
    assert teacher_class_map("t.safetensors", names, names, "voc").tolist() == [0, 1, 2]
    with pytest.raises(EdgesegError, match="cannot be mapped"):
        teacher_class_map("t.safetensors", ("car", "background", "bus"), names, "voc")
