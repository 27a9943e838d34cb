import json

from edgeseg.cli import DEFAULT_BENCH_IMAGE, main
from edgeseg.evaluation.benchmark import STAGES, benchmark_file, format_results


def test_benchmark_reports_every_stage(dm05_official):
    result = benchmark_file(dm05_official, DEFAULT_BENCH_IMAGE, threads=1, runs=2, warmup=1)
    summary = result.summary()
    assert all(len(result.stage_ms[s]) == 2 for s in STAGES)
    assert summary["e2e_median_ms"] >= summary["invoke_median_ms"] > 0
    assert "deeplabv3_mnv2_dm05_pascal_quant.tflite" in format_results([summary])


def test_benchmark_cli_writes_json(dm05_official, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["benchmark", str(dm05_official), "--threads", "1,2", "--runs", "2", "--warmup", "0",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["threads"] for r in rows] == [1, 2]
    assert "invoke med" in capsys.readouterr().out


def test_benchmark_bad_image(dm05_official, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    assert main(["benchmark", str(dm05_official), "--image", str(bad)]) == 2
    assert "bad.jpg: cannot read image" in capsys.readouterr().err
