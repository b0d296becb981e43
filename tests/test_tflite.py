"""TFLite target: litert-torch and onnx2tf converters, full-integer int8 with int8 IO, layouts recorded."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeport import load_config, run
from edgeport.cli import app
from tests.conftest import write_config
from tests.models import TOKENS_MODEL, write_digit_tokens, write_photo_crops

pytestmark = [pytest.mark.tflite, pytest.mark.slow]

ALL = '[targets.tflite]\nprecisions = ["fp32", "fp16", "int8-dynamic", "int8", "full-int8"]\n'


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, model_cache):
    folder = tmp_path_factory.mktemp("tfl")
    return run(load_config(write_config(folder, targets=ALL))), folder


def test_digits_every_precision_verifies(digits_run):
    result, _ = digits_run
    arts = {r.artifact.precision: r for r in result.artifacts}
    assert list(arts) == ["fp32", "fp16", "int8-dynamic", "int8", "full-int8"]
    assert all(r.verify.passed for r in result.artifacts), result.failures
    assert arts["fp32"].verify.cosine >= 0.9999
    for p in ("int8", "full-int8"):
        assert (arts["fp32"].verify.accuracy - arts[p].verify.accuracy) * 100 <= 1.0
    assert arts["int8"].artifact.converter == "litert-torch" and arts["full-int8"].artifact.converter == "onnx2tf"


def test_layouts_and_int8_io_are_recorded(digits_run):
    result, _ = digits_run
    arts = {r.artifact.precision: r.artifact for r in result.artifacts}
    fp32_in = arts["fp32"].inputs[0]
    assert fp32_in.shape == [1, 1, 8, 8] and fp32_in.layout == "NCHW" and fp32_in.source_axes is None
    full = arts["full-int8"]
    x = full.inputs[0]
    assert x.shape == [1, 8, 8, 1] and x.layout == "NHWC" and x.source_axes == [0, 2, 3, 1]
    assert x.dtype == "int8" and 0 < x.scale < 1 and -128 <= x.zero_point <= 127
    assert full.outputs[0].dtype == "int8" and full.outputs[0].scale > 0


def test_threads_and_xnnpack_are_recorded(digits_run):
    result, _ = digits_run
    for r in result.artifacts:
        b = r.bench[0]
        assert b.runtime == "tflite" and b.threads == 1 and b.options["xnnpack"] is True


def test_a_mismatched_layout_is_caught_not_passed(digits_run, tmp_path):
    """Claim the NHWC full-int8 input is fed with H and W swapped: same shape, silently wrong."""
    result, folder = digits_run
    artifact = next(r.artifact for r in result.artifacts if r.artifact.precision == "full-int8")
    record = json.loads((artifact.root / "artifact.json").read_text())
    record["inputs"][0]["source_axes"] = [0, 3, 2, 1]
    (artifact.root / "artifact.json").write_text(json.dumps(record))
    try:
        out = CliRunner().invoke(app, ["verify", str(artifact.root), "--config", str(folder / "config.toml")])
        assert out.exit_code == 3, out.output
        assert "verification failed: tflite/full-int8: accuracy" in out.output
        assert "points below PyTorch's" in out.output
    finally:
        record["inputs"][0]["source_axes"] = [0, 2, 3, 1]
        (artifact.root / "artifact.json").write_text(json.dumps(record))


def test_attention_block_through_both_converters(tmp_path):
    write_digit_tokens(tmp_path)
    targets = '[targets.tflite]\nprecisions = ["fp32", "full-int8"]\n'
    lt = run(load_config(write_config(tmp_path, model=TOKENS_MODEL, data="", targets=targets, name="lt")), until="verify")
    (tmp_path / "o").mkdir()
    write_digit_tokens(tmp_path / "o")
    o2t = run(load_config(write_config(tmp_path / "o", model=TOKENS_MODEL, data="", name="o2t",
                                       targets=targets + 'converter = "onnx2tf"\n')), until="verify")
    for result, converter in ((lt, "litert-torch"), (o2t, "onnx2tf")):
        arts = {r.artifact.precision: r for r in result.artifacts}
        assert arts["fp32"].artifact.converter == converter
        assert arts["fp32"].verify.cosine >= 0.9999, (converter, arts["fp32"].verify)
        full = arts["full-int8"]
        assert full.verify.cosine >= 0.99, full.verify
        assert result.reference_accuracy > 0.9
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(full.artifact.main_file))
        assert [d["dtype"] for d in it.get_input_details()] == [np.int8]
        assert [d["dtype"] for d in it.get_output_details()] == [np.int8]
        assert full.artifact.inputs[0].shape == [1, 8, 8]  # 3-D tokens keep their shape


def test_onnx2tf_conversion_never_touches_the_network(tmp_path, monkeypatch):
    """A 3-channel image model is what makes onnx2tf reach for its sample download."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    write_photo_crops(tmp_path)
    model = ('[model]\nsource = "tests.models:rgb_net"\n'
             'inputs = [{ name = "x", shape = ["batch", 3, 16, 16], dtype = "float32", layout = "NCHW" }]\n')
    data = '[data]\nsource = "npy"\npath = "crops.npy"\ncalibration_samples = 64\n'
    config = write_config(tmp_path, model=model, data=data, targets='[targets.tflite]\nprecisions = ["full-int8"]\n',
                          body="[verify.tolerances.full-int8]\nmin_cosine = 0.99\n")
    result = run(load_config(config), until="verify")
    assert attempts == []
    assert result.artifacts[0].verify.passed, result.failures
    assert result.artifacts[0].artifact.inputs[0].shape == [1, 16, 16, 3]
