"""ExecuTorch (.pte, XNNPACK): the fourth runtime, added as one module and one table line. The
contract test (test_target_contract.py) runs it through the checks every target passes; these
check what is its own: the digits CNN and a token model through the public CLI, per-output
figures, the benchmark through its own loader, and a bundle that runs its own example."""

from __future__ import annotations

import json

import pytest

from tests.conftest import invoke, write_config
from tests.models import TEXT_MODEL, write_text_data

pytest.importorskip("executorch", reason="ExecuTorch is an optional extra: pip install 'edgeport[executorch]'")
pytestmark = pytest.mark.slow

ALL = '[targets.executorch]\nprecisions = ["fp32", "int8", "int8-dynamic"]\n'


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, model_cache):
    folder = tmp_path_factory.mktemp("et")
    code, output = invoke("run", write_config(folder, targets=ALL, name="et"))
    return folder / "runs" / "et", code, output


def test_every_precision_verifies_and_is_timed(digits_run):
    run_dir, code, output = digits_run
    assert code == 0, output
    report = json.loads((run_dir / "report.json").read_text())
    rows = {a["precision"]: a for a in report["artifacts"]}
    assert set(rows) == {"fp32", "int8", "int8-dynamic"}
    assert rows["fp32"]["verify"]["cosine"] > 0.99999 and rows["fp32"]["verify"]["max_abs"] < 1e-4
    for precision in ("int8", "int8-dynamic"):
        v = rows[precision]["verify"]
        assert v["passed"] and (v["reference_accuracy"] - v["accuracy"]) * 100 <= 1.0, precision
    assert rows["int8"]["size_bytes"] < rows["fp32"]["size_bytes"] / 3  # weights and activations int8
    for a in report["artifacts"]:
        (bench,) = a["bench"]
        assert bench["runtime"] == "executorch" and bench["threads"] == 1 and bench["p50_ms"] > 0
        assert a["inputs"][0]["runtime_name"] == "in0" and a["outputs"][0]["runtime_name"] == "out0"


def test_the_bundle_runs_its_own_example(digits_run):
    run_dir, _, _ = digits_run
    (bundle,) = [b for b in (run_dir / "bundles").iterdir()]
    code, output = invoke("package", "verify", bundle)
    assert code == 0, output
    assert (bundle / "model.pte").is_file() and "Module module(\"model.pte\")" in (bundle / "example.cc").read_text()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["runtime"]["pip"].startswith("executorch")


def test_a_token_model_keeps_its_attention_in_int8(tmp_path, model_cache):
    """int64 ids and a mask: static int8 quantizes the Linear layers only (the mask's -10000 in
    int8 would take attention's whole range: cosine 0.016 before), dynamic int8 the Linear layers."""
    write_text_data(tmp_path)
    code, output = invoke("run", write_config(tmp_path, model=TEXT_MODEL, data="", targets=ALL, name="text"))
    assert code == 0, output
    report = json.loads((tmp_path / "runs" / "text" / "report.json").read_text())
    for a in report["artifacts"]:
        assert a["inputs"][0]["dtype"] == "int64"  # ExecuTorch keeps int64 ids (TFLite makes them int32)
        assert a["verify"]["passed"] and a["verify"]["cosine"] > 0.999, (a["precision"], a["verify"])
    int8 = next(a for a in report["artifacts"] if a["precision"] == "int8")
    assert int8["options"]["quantization"]["layers"] == "Linear and Conv only"
