"""What a user sees: a small run through the CLI with stdout and stderr piped (not a terminal)
shows edgeport's own timestamped stage lines and the table, and no line from absl, TensorFlow,
torchao, triton, NNCF, XNNPACK or Python warnings: those are in the run's logs/ folder instead.
The run's report.html holds report.md's rows and its plots, offline. `edgeport bench` writes
under runs/bench/ by default, never into the current folder."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeport.cli import app
from tests.conftest import write_config

pytestmark = [pytest.mark.openvino, pytest.mark.tflite, pytest.mark.slow]

# One pattern per library that used to talk on the terminal during `edgeport demo`.
NOISE = {
    "absl": re.compile(r"absl|InitializeLog"),
    "tensorflow": re.compile(r"oneDNN|port\.cc|cpu_feature_guard|^[IWEF]\d{4} "),
    "torchao": re.compile(r"torchao"),
    "triton": re.compile(r"triton", re.I),
    "nncf": re.compile(r"nncf|Statistics collection|Fast Bias correction", re.I),
    "xnnpack": re.compile(r"XNNPACK"),
    "python warnings": re.compile(r"\w+Warning\b|_pytree"),
}
STAGE_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (\w+) +(\S+) (\.\.\.|done in \d+\.\d s.*|\(cached\)|\d+/\d+.*)$")

TARGETS = """
[targets.openvino]
precisions = ["int8"]

[targets.tflite]
precisions = ["fp32", "int8"]

[package]
enabled = false
"""
BENCH = "[bench]\niterations = 10\nmin_seconds = 0.0\nwarmup = 1\nthreads = 1\nbaseline = false\n"


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory, model_cache):
    """`edgeport run` on the digits CNN (OpenVINO int8 through NNCF, TFLite fp32 and int8
    through litert-torch), output to pipes."""
    for module in ("openvino", "nncf", "litert_torch", "ai_edge_litert"):
        pytest.importorskip(module)
    folder = tmp_path_factory.mktemp("piped")
    config = write_config(folder, targets=TARGETS, bench=BENCH)
    done = subprocess.run([sys.executable, "-m", "edgeport", "run", str(config)], capture_output=True, text=True,
                          timeout=900, cwd=folder, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done, folder / "runs" / "t"


def noisy(text: str) -> list[str]:
    return [f"{name}: {line}" for line in text.splitlines() for name, pattern in NOISE.items() if pattern.search(line)]


def test_a_piped_run_shows_only_edgeports_lines(piped_run):
    done, run_dir = piped_run
    assert noisy(done.stderr) == [] and noisy(done.stdout) == []
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines and all(STAGE_LINE.match(ln) for ln in lines), "\n".join(ln for ln in lines if not STAGE_LINE.match(ln))
    assert any(re.search(r"quantize +artifacts/openvino-int8 done in", ln) for ln in lines)
    assert any(re.search(r"quantize +artifacts/tflite-int8 \.\.\.$", ln) for ln in lines)
    assert any(re.search(r"bench +artifacts 3/3: ", ln) for ln in lines)  # the device benchmarks' count
    # each stage's cache hit is shown once, not at every internal lookup
    cached = [ln.split("] ", 1)[1] for ln in lines if ln.endswith("(cached)")]
    assert len(cached) == len(set(cached))
    assert "openvino" in done.stdout and "tflite" in done.stdout and "logs:" in done.stdout


def test_the_libraries_output_is_in_the_runs_log(piped_run):
    _, run_dir = piped_run
    (log,) = (run_dir / "logs").glob("*.log")
    assert re.fullmatch(r"\d{8}-\d{6}\.log", log.name)
    text = log.read_text()
    found = {name for name, pattern in NOISE.items() if pattern.search(text)}
    assert {"absl", "torchao", "nncf", "xnnpack", "python warnings"} <= found, found


class Tables(HTMLParser):
    """Every table's rows as lists of cell texts, and every image's src."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.scripts, self.cell = [], [], 0, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""
        elif tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag in ("script", "link"):
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def markdown_tables(text: str) -> list[list[list[str]]]:
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            cells = [c.strip().replace("`", "").replace("**", "") for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        else:
            current = None
    return tables


def test_report_html_holds_report_md_rows_and_embeds_the_plots(piped_run):
    _, run_dir = piped_run
    md = (run_dir / "report.md").read_text()
    page = Tables()
    page.feed((run_dir / "report.html").read_text())
    expected = markdown_tables(md)
    assert len(expected) >= 2  # the results and a sensitivity table
    assert page.tables == expected
    assert any(row[:2] == ["openvino", "int8"] for row in page.tables[0])
    assert len(page.images) == md.count("![") >= 2  # latency vs accuracy, OpenVINO int8 sensitivity
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.scripts == 0 and "http://" not in md and "https://" not in (run_dir / "report.html").read_text()


def test_bench_writes_under_runs_bench_by_default(piped_run, tmp_path, monkeypatch):
    _, run_dir = piped_run
    monkeypatch.chdir(tmp_path)
    artifact = run_dir / "artifacts" / "tflite-fp32"
    result = CliRunner().invoke(app, ["bench", str(artifact), "--iterations", "5", "--min-seconds", "0", "--warmup", "1"])
    assert result.exit_code == 0, result.output
    (written,) = (tmp_path / "runs" / "bench").glob("*.json")
    assert re.fullmatch(r"\d{8}T\d{6}Z\.json", written.name)
    assert [r["artifact"] for r in json.loads(written.read_text())] == [str(artifact)]
    assert f"results:    {Path('runs') / 'bench' / written.name}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing else in the current folder
    chosen = tmp_path / "mine.json"
    result = CliRunner().invoke(app, ["bench", str(artifact), "--iterations", "5", "--min-seconds", "0", "--out", str(chosen)])
    assert result.exit_code == 0, result.output
    assert json.loads(chosen.read_text())[0]["artifact"] == str(artifact)
    assert len(list((tmp_path / "runs" / "bench").glob("*.json"))) == 1  # --out wins


@pytest.mark.onnxruntime
def test_verbose_shows_the_libraries_but_not_onnxscripts_info_lines(tmp_path, model_cache):
    config = write_config(tmp_path)
    done = subprocess.run([sys.executable, "-m", "edgeport", "export", str(config), "-t", "onnxruntime", "-p", "int8", "-v"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^INFO onnxruntime\.quantization", done.stderr, re.M)  # a library's INFO line, shown with -v
    assert not re.search(r"^INFO (onnxscript|onnx_ir)\b", done.stderr, re.M)  # hundreds of these per export
    assert (tmp_path / "runs" / "t" / "logs").is_dir()  # and the log file has them too
