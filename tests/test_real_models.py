"""Models shaped like the ones users bring, through the public CLI on every installed target:
a text encoder (int64 token ids and a mask, an output named like an internal node), a streaming
model (three inputs, three outputs, recurrent state, two outputs of one shape), and a run in which
one target crashes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from edgeport.targets import onnxruntime as ort_target
from tests.conftest import invoke, write_config
from tests.models import STREAM_MODEL, TEXT_MODEL, write_stream_data, write_text_data

pytestmark = [pytest.mark.onnxruntime, pytest.mark.openvino, pytest.mark.tflite, pytest.mark.slow]

EVERY_TARGET = """
[targets.onnxruntime]
precisions = ["fp32", "int8"]
[targets.openvino]
precisions = ["fp32", "fp16", "int8"]
[targets.tflite]
precisions = ["fp32", "fp16", "int8-dynamic", "int8", "full-int8"]
"""


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, model_cache):
    folder = tmp_path_factory.mktemp("text")
    write_text_data(folder)
    config = write_config(folder, model=TEXT_MODEL, data="", targets=EVERY_TARGET, name="text")
    code, output = invoke("run", config)
    return folder / "runs" / "text", code, output


def test_a_text_encoder_goes_through_every_target_and_precision(text_run):
    run_dir, code, output = text_run
    assert code in (0, 3), output
    report = json.loads((run_dir / "report.json").read_text())
    rows = {(a["target"], a["precision"]): a for a in report["artifacts"]}
    assert set(rows) == {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "fp16"),
                         ("openvino", "int8"), ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8-dynamic"),
                         ("tflite", "int8"), ("tflite", "full-int8")}
    for key, a in rows.items():
        assert a["error"] is None, (key, a["error"])  # every one was built
        assert a["bench"], key  # and timed, on token ids taken from the held-out data
        assert a["bench"][0]["options"]["inputs"].endswith("held-out sample(s), cycled")
    # ONNX Runtime int8 of an attention graph: built, and close (the mask's -10000 stays float)
    ort_int8 = rows[("onnxruntime", "int8")]
    assert ort_int8["verify"]["passed"] and ort_int8["verify"]["cosine"] > 0.99
    assert ort_int8["options"]["quantization"]["model_type"] == "transformer"
    for key in (("onnxruntime", "fp32"), ("openvino", "fp32"), ("tflite", "fp32")):
        assert rows[key]["verify"]["passed"] and rows[key]["verify"]["cosine"] > 0.9999, key
    # an embedding is not class scores: no top-1 agreement, no accuracy
    assert all(a["verify"]["top1_agreement"] is None and a["verify"]["accuracy"] is None for a in rows.values())
    assert "No output is taken as class scores" in (run_dir / "report.md").read_text()


def test_the_user_output_name_survives_a_colliding_module_name(text_run):
    """The encoder's embedding module makes the exporter name a value `embedding`; the user's
    output of that name must win, in the ONNX file and in every runtime's record."""
    run_dir, _, _ = text_run
    model = onnx.load(str(run_dir / "interchange" / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["embedding"]
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    for record in run_dir.glob("artifacts/*/artifact.json"):
        artifact = json.loads(record.read_text())
        assert [o["name"] for o in artifact["outputs"]] == ["embedding"], record


def test_tflite_records_its_own_names_and_int32_ids(text_run):
    run_dir, _, _ = text_run
    artifact = json.loads((run_dir / "artifacts" / "tflite-fp32" / "artifact.json").read_text())
    ids = artifact["inputs"][0]
    assert ids["name"] == "input_ids" and ids["runtime_name"] == "args_0"
    assert ids["dtype"] == "int32" and ids["source_dtype"] == "int64"
    assert artifact["outputs"][0]["runtime_name"] == "output_0"


def test_text_bundles_run_their_own_example(text_run, tmp_path):
    run_dir, _, _ = text_run
    for bundle in sorted((run_dir / "bundles").iterdir()):
        code, output = invoke("package", "verify", bundle)
        assert code == 0, (bundle.name, output)
        inputs = tmp_path / "ids.npz"
        with np.load(run_dir / "calibration" / "evaluation.npz") as data:
            np.savez(inputs, input_ids=data["input:input_ids"][:3], attention_mask=data["input:attention_mask"][:3])
        out = subprocess.run([sys.executable, str(bundle / "example.py"), str(inputs)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("embedding: [1, 64]") == 3, out.stdout


@pytest.fixture(scope="module")
def stream_runs(tmp_path_factory, model_cache):
    """The streaming model through TFLite's two converters (and full-int8) and ONNX Runtime."""
    runs = {}
    for converter in ("litert-torch", "onnx2tf"):
        folder = tmp_path_factory.mktemp(converter)
        write_stream_data(folder)
        targets = (f'[targets.tflite]\nprecisions = ["fp32", "full-int8"]\nconverter = "{converter}"\n'
                   '[targets.onnxruntime]\nprecisions = ["int8"]\n')
        config = write_config(folder, model=STREAM_MODEL, data="",
                              targets=targets, name="stream")
        code, output = invoke("run", config)
        runs[converter] = (folder / "runs" / "stream", code, output)
    return runs


def test_three_inputs_and_outputs_map_by_name_through_both_converters(stream_runs):
    for converter, (run_dir, code, output) in stream_runs.items():
        assert code == 0, output
        report = json.loads((run_dir / "report.json").read_text())
        for a in report["artifacts"]:
            assert [o["name"] for o in a["outputs"]] == ["scores", "h_next", "c_next"]
            assert [i["name"] for i in a["inputs"]] == ["x", "h", "c"]
            # h_next and c_next have the same shape: swapped, their cosine would be far below these
            floor = 0.9999 if a["precision"] == "fp32" else 0.999
            for o in a["verify"]["outputs"]:
                assert o["cosine"] > floor and o["cosine_min"] > floor - 0.01, (converter, a["precision"], o)
        report_md = (run_dir / "report.md").read_text()
        assert "## Outputs" in report_md and "| tflite/full-int8 | c_next |" in report_md


def test_a_stream_bundle_feeds_its_state_back(stream_runs, tmp_path):
    run_dir, _, _ = stream_runs["litert-torch"]
    bundle = next(b for b in (run_dir / "bundles").iterdir() if "tflite" in b.name)
    code, output = invoke("package", "verify", bundle)
    assert code == 0, output
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["state"] == {"h": "h_next", "c": "c_next"}
    with np.load(run_dir / "calibration" / "evaluation.npz") as data:
        np.savez(tmp_path / "frames.npz", x=data["input:x"][:4])  # frames only: the state starts at zero
    out = subprocess.run([sys.executable, str(bundle / "example.py"), str(tmp_path / "frames.npz")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert [line.split(":")[0] for line in out.stdout.splitlines()] == ["0", "1", "2", "3"]
    runtime = {i["name"]: i.get("runtime_name") or i["name"] for i in manifest["inputs"]}
    state_inputs = f'kStateTo[] = {{"{runtime["h"]}", "{runtime["c"]}"}}'
    assert state_inputs in (bundle / "example.cc").read_text()  # the C++ example names the state inputs


def test_one_crashing_target_never_sinks_the_run(tmp_path, model_cache, monkeypatch):
    """An exception injected into ONNX Runtime's int8 build: its row says error with the reason and
    a log; OpenVINO's rows and the report are all there; the exit code is 3."""
    def crash(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(ort_target.OnnxRuntimeTarget, "_quantize", crash)
    targets = '[targets.onnxruntime]\nprecisions = ["fp32", "int8"]\n[targets.openvino]\nprecisions = ["fp32", "int8"]\n'
    code, output = invoke("run", write_config(tmp_path, targets=targets, name="crash"))
    assert code == 3, output
    assert "onnxruntime/int8: build failed: RuntimeError: injected failure" in " ".join(output.split())
    run_dir = tmp_path / "runs" / "crash"
    report = json.loads((run_dir / "report.json").read_text())
    rows = {(a["target"], a["precision"]): a for a in report["artifacts"]}
    assert rows[("onnxruntime", "int8")]["error"].startswith("build failed: RuntimeError: injected failure")
    assert "injected failure" in (run_dir / rows[("onnxruntime", "int8")]["log"]).read_text()
    for key in (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "int8")):
        assert rows[key]["verify"]["passed"] and rows[key]["bench"], key
    assert "| onnxruntime | int8 |  | local | — | — | — | — | — | error |" in (run_dir / "report.md").read_text()


def test_accuracy_aware_int8_keeps_compute_ops_and_says_when_it_misses(tmp_path, model_cache):
    """On the text encoder, an unreachable budget: OpenVINO's float set names only ops that
    compute (never a Reshape, which changed nothing and cost 60% latency), and the miss is a
    verification failure with exit code 3, not a line inside report.md."""
    import openvino as ov

    from edgeport.targets.openvino import DATA_MOVEMENT

    write_text_data(tmp_path)
    targets = '[targets.openvino]\nprecisions = ["int8"]\nmin_cosine = 0.9999999\nmax_float_layers = 2\n'
    code, output = invoke("run", write_config(tmp_path, model=TEXT_MODEL, data="", targets=targets, name="aware"))
    assert code == 3, output
    assert "accuracy-aware int8 did not meet {'min_cosine': 0.9999999} on calibration data" in " ".join(output.split())
    run_dir = tmp_path / "runs" / "aware"
    record = json.loads((run_dir / "artifacts" / "openvino-int8" / "artifact.json").read_text())
    aware = record["options"]["quantization"]["accuracy_aware"]
    assert not aware["met"] and len(aware["float_tensors"]) == 2 and aware["nodes_excluded"]
    ops = {op.get_friendly_name(): op.get_type_name()
           for op in ov.Core().read_model(str(run_dir / "artifacts" / "openvino-fp32" / "model.xml")).get_ops()}
    kinds = {ops[n] for n in aware["nodes_excluded"]}
    assert kinds and not kinds & DATA_MOVEMENT, kinds
