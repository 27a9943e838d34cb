"""On the board, end to end: `--delegate` / `Segmenter(delegate=)` on every path that runs a model, files compiled
by Vela for the Ethos-U NPU, and the tflite_runtime interpreter that NXP's board images ship instead of LiteRT.

The ai-edge-litert wheel ships no library exporting `tflite_plugin_create_delegate`, so the real-delegate checks
compile a no-op delegate (it claims no node: LiteRT calls its Prepare, then runs every op itself) with the C
compiler where there is one; a library that is not a delegate (libc) is refused either way.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeseg
from edgeseg.cli import main
from edgeseg.errors import EdgesegError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PHOTO = SHARED / "voc" / "VOC2012" / "JPEGImages" / "2007_000733.jpg"  # a motorbike and its rider
MISSING = "/nonexistent/libvx_delegate.so"

# The TfLiteDelegate struct of LiteRT's common.h, and the two functions of the external delegate plugin API.
NOOP_DELEGATE_C = r"""
#include <stddef.h>
#include <stdint.h>
typedef struct TfLiteDelegate {
  void* data_;
  int (*Prepare)(void* context, struct TfLiteDelegate* delegate);
  void* CopyFromBufferHandle;
  void* CopyToBufferHandle;
  void* FreeBufferHandle;
  int64_t flags;
  void* opaque_delegate_builder;
} TfLiteDelegate;
static int prepared = 0;
static int prepare(void* context, TfLiteDelegate* delegate) { (void)context; (void)delegate; prepared++; return 0; }
static TfLiteDelegate delegate = {NULL, prepare, NULL, NULL, NULL, 0, NULL};
TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t count, void (*error)(const char*)) {
  (void)keys; (void)values; (void)count; (void)error; return &delegate;
}
void tflite_plugin_destroy_delegate(TfLiteDelegate* d) { (void)d; }
int noop_delegate_prepared(void) { return prepared; }
"""


@pytest.fixture(scope="module")
def noop_delegate(tmp_path_factory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler to build the no-op delegate")
    folder = tmp_path_factory.mktemp("delegate")
    (folder / "noop.c").write_text(NOOP_DELEGATE_C)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(folder / "libnoop_delegate.so"), str(folder / "noop.c")],
                   check=True, capture_output=True)
    return folder / "libnoop_delegate.so"


def _prepared(library: Path) -> int:
    """How often LiteRT has called the delegate's Prepare in this process (dlopen shares the loaded library)."""
    import ctypes

    return ctypes.CDLL(str(library)).noop_delegate_prepared()


@pytest.fixture(scope="module")
def vela_tflite(tmp_path_factory, dm05_official) -> Path:
    """The official file with its first op turned into Vela's "ethos-u" custom op, as in a file Vela compiled
    (its NPU part becomes such ops), named as Vela names its output."""
    from ai_edge_litert import schema_py_generated as schema

    from edgeseg.tflite.edit import read_model, serialize

    model = read_model(dm05_official.read_bytes())
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode, code.version = b"ethos-u", 1
    model.operatorCodes.append(code)
    op = model.subgraphs[0].operators[0]
    op.opcodeIndex, op.builtinOptionsType, op.builtinOptions = len(model.operatorCodes) - 1, 0, None
    path = tmp_path_factory.mktemp("vela") / "deeplabv3_mnv2_dm05_pascal_quant_vela.tflite"
    path.write_bytes(serialize(model))
    return path


def _one_error_line(err: str, *needles: str) -> None:
    assert err.startswith("edgeseg: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def _libc() -> Path:
    """The C library this process has loaded: a shared library that is no TFLite delegate."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if re.search(r"/libc[.-][^/]*so", path) and Path(path).is_file():
            return Path(path)
    pytest.skip("cannot find the C library's path")


# --delegate on predict, evaluate and the API ------------------------------------------------------------------

def test_missing_delegate_is_one_line_on_predict_evaluate_and_segmenter(voc_root, dm05_official, tmp_path, capsys):
    assert main(["predict", str(PHOTO), "-o", str(tmp_path / "out"), "--delegate", MISSING]) == 2
    _one_error_line(capsys.readouterr().err, f"delegate library {MISSING} not found")
    assert not (tmp_path / "out").exists()  # a failed predict leaves no folder behind
    args = ["evaluate", "--data", str(voc_root), "--limit", "1", "--tflite", str(dm05_official)]
    assert main([*args, "--delegate", MISSING]) == 2
    _one_error_line(capsys.readouterr().err, f"delegate library {MISSING} not found")
    with pytest.raises(EdgesegError, match="libvx_delegate.so not found"):
        edgeseg.Segmenter(delegate=MISSING)
    with pytest.raises(EdgesegError, match="libvx_delegate.so not found"):
        edgeseg.Segmenter(tflite=dm05_official, delegate=MISSING)


def test_a_library_that_is_not_a_delegate_is_refused(tmp_path, capsys):
    libc = _libc()
    with pytest.raises(EdgesegError, match="is not a TFLite delegate \\(no tflite_plugin_create_delegate symbol\\)"):
        edgeseg.Segmenter(delegate=libc)
    assert main(["predict", str(PHOTO), "-o", str(tmp_path), "--delegate", str(libc)]) == 2
    _one_error_line(capsys.readouterr().err, "is not a TFLite delegate")


def test_delegate_with_torch_or_a_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(EdgesegError, match="not the PyTorch model: drop --backend torch"):
        edgeseg.Segmenter(backend="torch", delegate=MISSING)
    with pytest.raises(EdgesegError, match="not a PyTorch checkpoint"):  # before the checkpoint is read
        edgeseg.Segmenter(weights=tmp_path / "missing.safetensors", delegate=MISSING)
    assert main(["predict", str(PHOTO), "--weights", "best.safetensors", "--delegate", MISSING]) == 2
    _one_error_line(capsys.readouterr().err, "--delegate runs a .tflite with LiteRT")


def test_a_real_delegate_runs_predict_and_evaluate_with_the_same_labels(noop_delegate, voc_root, tmp_path, capsys):
    before = _prepared(noop_delegate)
    seg = edgeseg.Segmenter(delegate=noop_delegate)
    assert _prepared(noop_delegate) == before + 1  # LiteRT applied it
    assert seg.description.endswith(", delegate libnoop_delegate.so")
    np.testing.assert_array_equal(seg(PHOTO).labels, edgeseg.Segmenter()(PHOTO).labels)
    for name, flags in (("cpu", []), ("delegate", ["--delegate", str(noop_delegate)])):
        assert main(["predict", str(PHOTO), "-o", str(tmp_path / name), *flags]) == 0
    capsys.readouterr()
    with Image.open(tmp_path / "cpu" / f"{PHOTO.stem}_labels.png") as cpu, \
            Image.open(tmp_path / "delegate" / f"{PHOTO.stem}_labels.png") as delegated:
        np.testing.assert_array_equal(np.asarray(cpu), np.asarray(delegated))
    assert main(["evaluate", "--data", str(voc_root), "--limit", "1", "--delegate", str(noop_delegate)]) == 0
    assert "(official INT8 TFLite), delegate libnoop_delegate.so on" in capsys.readouterr().out


def test_a_video_runs_through_the_delegate(noop_delegate, tmp_path, capsys):
    av = pytest.importorskip("av")
    pixels = np.asarray(Image.open(PHOTO).convert("RGB"))[:360, :480]  # even sides for yuv420p
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 480, 360, "yuv420p"
        for _ in range(2):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    before = _prepared(noop_delegate)
    for name, flags in (("cpu", []), ("delegate", ["--delegate", str(noop_delegate)])):
        assert main(["predict", str(clip), "-o", str(tmp_path / name), "--frame-labels", "--no-progress",
                     *flags]) == 0
    assert "2 frames in" in capsys.readouterr().out and _prepared(noop_delegate) == before + 1
    for frame in ("000000.png", "000001.png"):
        with Image.open(tmp_path / "cpu" / "clip_labels" / frame) as cpu, \
                Image.open(tmp_path / "delegate" / "clip_labels" / frame) as delegated:
            np.testing.assert_array_equal(np.asarray(cpu), np.asarray(delegated))
    frames = list(edgeseg.Segmenter(delegate=noop_delegate).stream(clip))
    assert len(frames) == 2 and frames[0][1].labels.shape == (360, 480)


# Files compiled by Vela for the i.MX 93's Ethos-U65 ------------------------------------------------------------

VELA_MESSAGE = ("was compiled by Vela for the Ethos-U NPU (ethos-u custom op): run it on the i.MX 93 with "
                "--delegate /usr/lib/libethosu_delegate.so, or run the plain .tflite exported beside it")


def test_vela_file_without_a_delegate_is_one_line_before_litert_sees_it(vela_tflite, voc_root, tmp_path, capsys,
                                                                        monkeypatch):
    from edgeseg.runtimes import litert
    from edgeseg.tflite.reader import custom_codes

    assert custom_codes(vela_tflite) == {"ethos-u"}
    monkeypatch.setattr(litert, "Interpreter", _never_called)  # the check comes first
    with pytest.raises(EdgesegError) as caught:
        edgeseg.Segmenter(tflite=vela_tflite)
    assert str(caught.value) == f"{vela_tflite} {VELA_MESSAGE}"
    assert main(["predict", str(PHOTO), "--tflite", str(vela_tflite), "-o", str(tmp_path)]) == 2
    _one_error_line(capsys.readouterr().err, VELA_MESSAGE)
    assert main(["evaluate", "--data", str(voc_root), "--limit", "1", "--tflite", str(vela_tflite)]) == 2
    _one_error_line(capsys.readouterr().err, VELA_MESSAGE)


def _never_called(*args, **kwargs):
    raise AssertionError("the interpreter was created for a Vela file")


def test_vela_file_with_a_delegate_is_let_through(vela_tflite, request):
    with pytest.raises(EdgesegError, match="libvx_delegate.so not found"):  # the delegate is checked, not Vela
        edgeseg.Segmenter(tflite=vela_tflite, delegate=MISSING)
    noop_delegate = request.getfixturevalue("noop_delegate")  # skips here without a C compiler
    # A delegate that is not Ethos-U's leaves the custom op to LiteRT, which has no kernel for it.
    with pytest.raises(EdgesegError, match="LiteRT cannot load it .*ethos-u") as caught:
        edgeseg.Segmenter(tflite=vela_tflite, delegate=noop_delegate)
    assert "compiled by Vela" not in str(caught.value)


def test_a_file_really_compiled_by_vela_is_recognised(dm05_official, tmp_path):
    """The op edgeseg looks for is the one Vela writes (ethos-u-vela, where installed), here compiling the official
    file's first conv alone (a second, where the whole graph takes several)."""
    from edgeseg.tflite.edit import read_model, serialize

    vela = Path(sys.executable).with_name("vela")
    if not vela.is_file():
        pytest.skip("ethos-u-vela is not installed")
    model = read_model(dm05_official.read_bytes())
    graph = model.subgraphs[0]
    graph.operators = graph.operators[:1]
    graph.outputs, model.signatureDefs = list(graph.operators[0].outputs), []
    (tmp_path / "first_conv.tflite").write_bytes(serialize(model))
    subprocess.run([str(vela), "--accelerator-config", "ethos-u65-256", "--config", "Arm/vela.ini",
                    "--system-config", "Ethos_U65_High_End", "--memory-mode", "Dedicated_Sram_384KB",
                    "--output-dir", str(tmp_path), str(tmp_path / "first_conv.tflite")], check=True,
                   capture_output=True, cwd=tmp_path)
    with pytest.raises(EdgesegError, match=re.escape(VELA_MESSAGE)):
        edgeseg.Segmenter(tflite=tmp_path / "first_conv_vela.tflite")


# tflite_runtime, as on NXP's board images -----------------------------------------------------------------------

# Run in a fresh interpreter: ai_edge_litert is hidden by a meta path finder (after the stand-in tflite_runtime,
# which re-exports LiteRT's interpreter under the board's module name, has been imported).
BOARD = textwrap.dedent("""
    import json, sys
    hide = sys.argv[1].split(",")
    if "tflite_runtime" not in hide:
        import tflite_runtime.interpreter
    for name in [m for m in sys.modules if m.split(".")[0] in hide]:
        del sys.modules[name]

    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in hide:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, Hide())
    import edgeseg
    from edgeseg.cli import main
    try:
        seg = edgeseg.Segmenter()
    except edgeseg.EdgesegError as exc:
        print(json.dumps({"error": str(exc), "cli": main(["predict", sys.argv[2], "-o", sys.argv[3]])}))
        sys.exit(0)
    labels = seg(sys.argv[2]).labels
    code = main(["predict", sys.argv[2], "-o", sys.argv[3]])
    import edgeseg.tflite.reader
    print(json.dumps({"module": seg.runtime.interpreter_module, "labels": labels.tolist(), "cli": code,
                      "schema": edgeseg.tflite.reader.schema is not None,
                      "hidden_loaded": sorted(m for m in sys.modules if m.split(".")[0] in hide)}))
""")

STAND_IN = "from ai_edge_litert.interpreter import Interpreter, load_delegate  # noqa: F401  (the board's name)\n"


def _on_board(tmp_path: Path, hide: str) -> tuple[dict, str]:
    package = tmp_path / "site" / "tflite_runtime"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "interpreter.py").write_text(STAND_IN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
           "EDGESEG_MIRROR": str(SHARED / "models")}
    run = subprocess.run([sys.executable, "-c", BOARD, hide, str(PHOTO), str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def test_tflite_runtime_runs_the_official_file_when_ai_edge_litert_is_absent(tmp_path):
    result, _ = _on_board(tmp_path, "ai_edge_litert")
    assert result["module"] == "tflite_runtime.interpreter"
    assert result["cli"] == 0 and (tmp_path / "out" / f"{PHOTO.stem}_labels.png").is_file()
    assert not result["schema"] and result["hidden_loaded"] == []  # metadata read without LiteRT's bindings
    np.testing.assert_array_equal(np.asarray(result["labels"]), edgeseg.Segmenter()(PHOTO).labels)
    assert edgeseg.Segmenter().runtime.interpreter_module == "ai_edge_litert.interpreter"


def test_neither_interpreter_is_one_line_naming_both(tmp_path):
    result, stderr = _on_board(tmp_path, "ai_edge_litert,tflite_runtime")
    assert "pip install ai-edge-litert" in result["error"] and "tflite_runtime" in result["error"]
    assert result["cli"] == 2
    _one_error_line(stderr, "pip install ai-edge-litert", "tflite_runtime")
