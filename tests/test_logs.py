"""Other libraries' output: one module (edgeseg.logs) quiets it, while edgeseg's own progress stays visible."""

from __future__ import annotations

import os
import sys

import pytest
from tqdm import tqdm

from edgeseg import logs


@pytest.fixture
def quiet():
    logs.set_verbose(False)
    yield
    logs.set_verbose(False)


def test_third_party_output_goes_to_the_log_and_edgeseg_progress_to_the_terminal(quiet, capfd):
    with logs.third_party_output("step"):
        print("python stdout noise")
        print("python stderr noise", file=sys.stderr)
        os.write(1, b"native stdout noise\n")
        os.write(2, b"native stderr noise\n")
        for _ in tqdm(range(3), desc="edgeseg bar", file=logs.progress_stream()):
            pass
    out, err = capfd.readouterr()
    assert "noise" not in out + err
    assert "edgeseg bar" in err and "3/3" in err


def test_verbose_shows_the_libraries_output(quiet, capfd):
    logs.set_verbose(True)
    with logs.third_party_output("step"), logs.native_stderr():
        os.write(2, b"native stderr line\n")
    assert "native stderr line" in capfd.readouterr().err


def test_native_stderr_drops_only_the_lines_it_is_told_to(quiet, capfd):
    with logs.native_stderr(drop=lambda line: line.startswith("INFO: ")):
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nWARNING: a real warning\n")
    assert capfd.readouterr().err == "WARNING: a real warning\n"


def test_a_failure_inside_becomes_one_line_naming_the_kept_log(quiet):
    with pytest.raises(Exception, match=r"step failed: ValueError: boom \(full log: ") as info:
        with logs.third_party_output("step"):
            raise ValueError("boom")
    log = str(info.value).split("full log: ")[1].split(";")[0]
    assert "ValueError: boom" in open(log).read()
    os.unlink(log)
