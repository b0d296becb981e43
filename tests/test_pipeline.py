"""The whole pipeline on the digits CNN through ONNX Runtime: numbers, files, cache."""

from __future__ import annotations

import json

import onnx
import pytest
from typer.testing import CliRunner

from edgeport import load_config, run
from edgeport.cli import app
from edgeport.types import Artifact, sha256_file
from tests.conftest import write_config

pytestmark = pytest.mark.onnxruntime

BENCH_FIELDS = {"device", "runtime", "runtime_version", "threads", "iterations", "warmup", "min_ms", "p50_ms", "p90_ms",
                "p99_ms", "mean_ms", "std_ms", "throughput_per_s", "load_ms", "first_ms", "peak_rss_mb",
                "model_size_bytes", "device_facts"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, model_cache):
    folder = tmp_path_factory.mktemp("pipeline")
    config = load_config(write_config(folder))
    return run(config), config


def by_precision(result):
    return {r.artifact.precision: r for r in result.artifacts}


def test_int8_keeps_accuracy_and_fp32_is_exact(finished):
    result, _ = finished
    arts = by_precision(result)
    fp32, int8 = arts["fp32"].verify, arts["int8"].verify
    assert fp32.passed and int8.passed
    assert fp32.cosine >= 0.9999 and fp32.samples == 540
    assert abs(fp32.accuracy - result.reference_accuracy) < 1e-9
    assert result.reference_accuracy > 0.95
    assert (fp32.accuracy - int8.accuracy) * 100 <= 1.0
    assert int8.cosine >= 0.99
    assert arts["int8"].artifact.size_bytes < arts["fp32"].artifact.size_bytes / 2


def test_the_int8_file_is_quantized(finished):
    result, _ = finished
    model = onnx.load(str(by_precision(result)["int8"].artifact.main_file))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_interchange_is_one_clean_file(finished):
    result, config = finished
    folder = config.run_dir / "interchange"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["model.onnx"]
    model = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    text = model.SerializeToString()
    assert b"stack_trace" not in text and b"site-packages" not in text and b"/tmp/" not in text
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch kept


def test_artifact_records_hash_every_file(finished):
    result, _ = finished
    for r in result.artifacts:
        again = Artifact.load(r.artifact.root)
        for f in again.files:
            assert sha256_file(again.root / f.path) == f.sha256
        assert again.inputs[0].name == "image" and again.outputs[0].name == "logits"


def test_bench_results_are_complete(finished):
    result, _ = finished
    rows = [*result.baseline_bench, *(b for r in result.artifacts for b in r.bench)]
    assert len(rows) == 3
    for b in rows:
        assert BENCH_FIELDS <= set(b.model_dump())
        assert b.iterations >= 20 and b.threads == 1
        assert 0 < b.min_ms <= b.p50_ms <= b.p90_ms <= b.p99_ms
        assert 0 < b.peak_rss_mb < 4000 and b.device_facts["cores"] >= 1
    assert result.baseline_bench[0].runtime == "pytorch-eager"


def test_bench_in_three_processes_reports_the_median_one(finished, tmp_path):
    """A VM can run one process 1.5x slower than the next for its whole life: --processes 3 times
    each artifact in three fresh processes and reports the one with the median p50."""
    result, _ = finished
    int8 = by_precision(result)["int8"].artifact.root
    out = tmp_path / "bench.json"
    code = CliRunner().invoke(app, ["bench", str(int8), "--processes", "3", "--iterations", "5", "--min-seconds", "0",
                                    "--warmup", "1", "--threads", "1", "--out", str(out)])
    assert code.exit_code == 0, code.output
    (row,) = json.loads(out.read_text())
    p50s = row["p50_per_process_ms"]
    assert len(p50s) == 3 and all(p > 0 for p in p50s)  # three processes, each timed
    assert row["p50_ms"] == sorted(p50s)[1]
    assert result.artifacts[0].bench[0].p50_per_process_ms == [result.artifacts[0].bench[0].p50_ms]  # default: one


def test_report_json_follows_the_public_shape(finished):
    result, config = finished
    report = json.loads((config.run_dir / "report.json").read_text())
    assert report["schema_version"] == 1 and report["run"] == "t"
    assert report["baseline"]["target"] == "pytorch" and 0 < report["baseline"]["verify"]["accuracy"] <= 1
    for a in report["artifacts"]:
        assert {"id", "target", "precision", "converter", "size_bytes", "files", "verify", "bench"} <= set(a)
        assert {"passed", "accuracy", "cosine", "max_abs", "sqnr_db", "top1_agreement"} <= set(a["verify"])
        assert a["files"][0]["path"].startswith(f"{a['target']}-{a['precision']}/")
    csv_lines = (config.run_dir / "results.csv").read_text().strip().splitlines()
    assert csv_lines[0].startswith("target,precision") and len(csv_lines) == 4
    assert "| onnxruntime | int8 |" in (config.run_dir / "report.md").read_text()
    assert (config.run_dir / "config.resolved.toml").is_file()


def test_rerun_redoes_nothing(finished):
    result, config = finished
    again = run(config)
    assert again.built == []
    assert [r.artifact.id for r in again.artifacts] == [r.artifact.id for r in result.artifacts]


def test_cli_run_prints_the_table_and_json(finished):
    _, config = finished
    path = config.base_dir / "config.toml"
    out = CliRunner().invoke(app, ["run", str(path)])
    assert out.exit_code == 0, out.output
    assert "onnxruntime" in out.output and "speedup" in out.output and "report:" in out.output
    out = CliRunner().invoke(app, ["run", str(path), "--json"])
    assert json.loads(out.stdout)["artifacts"][1]["precision"] == "int8"


def test_dry_run_prints_the_resolved_config_and_writes_nothing(tmp_path):
    path = write_config(tmp_path, name="dry")
    out = CliRunner().invoke(app, ["run", str(path), "--dry-run", "--threads", "2"])
    assert out.exit_code == 0
    assert 'name = "dry"' in out.output and "threads = 2" in out.output and "max_accuracy_drop" not in out.output
    assert not (tmp_path / "runs").exists()


def test_failed_verification_exits_3_and_names_the_limit(tmp_path):
    path = write_config(tmp_path, "[verify.tolerances.int8]\nmin_cosine = 0.9999999\n", name="strict")
    out = CliRunner().invoke(app, ["run", str(path)])
    assert out.exit_code == 3
    assert "onnxruntime/int8: output 'logits': cosine" in out.output and "min_cosine = 0.9999999" in out.output
