"""Quantization-aware training: on a model built to be hard for int8, QAT's int8 agrees with the
original model on held-out data far more often than plain PTQ's, through ONNX Runtime and
OpenVINO, which run the learned QDQ model; models QAT cannot take fail in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeport import load_config, run
from edgeport.errors import ConfigError
from edgeport.pipeline.compress import CompressContext, Qat, compress
from edgeport.targets.base import LEARNED_RANGES
from edgeport.types import CalibrationSet, TensorSpec
from tests.conftest import write_config
from edgeport.calibration.digits import digits_split
from tests.models import hard_digits_net

HARD_MODEL = """
[model]
source = "tests.models:hard_digits_net"
inputs = [{ name = "image", shape = ["batch", 1, 8, 8], dtype = "float32", layout = "NCHW" }]
output_names = ["logits"]
"""
DATA = '[data]\nsource = "digits"\ncalibration_samples = 256\n'
INT8 = '[targets.onnxruntime]\nprecisions = ["int8"]\n\n[targets.openvino]\nprecisions = ["int8"]\n'
QAT = '[[compress]]\nmethod = "qat"\nepochs = 20\nrange_lr = 0.03\n'


def agreement(artifact, x: np.ndarray, reference: np.ndarray) -> float:
    """Top-1 agreement of the artifact's file, run here by its runtime, with the original model."""
    if artifact.target == "onnxruntime":
        import onnxruntime as ort

        out = ort.InferenceSession(str(artifact.main_file), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(str(artifact.main_file), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        out = compiled(x)[0]
    return float((out.argmax(1) == reference.argmax(1)).mean())


@pytest.mark.onnxruntime
@pytest.mark.openvino
@pytest.mark.slow
def test_qat_int8_beats_plain_ptq_on_held_out_data(tmp_path):
    x = digits_split()[2]  # the held-out split; QAT trains on calibration samples of the train split
    model = hard_digits_net()  # trained on first use
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    results = {}
    for name, body in (("ptq", ""), ("qat", QAT)):
        (tmp_path / name).mkdir()
        config = write_config(tmp_path / name, body, model=HARD_MODEL, data=DATA, targets=INT8, name=name)
        results[name] = run(load_config(config), until="quantize")
    scores = {(name, r.artifact.target): agreement(r.artifact, x, reference)
              for name, result in results.items() for r in result.artifacts}
    for target in ("onnxruntime", "openvino"):
        ptq, qat = scores["ptq", target], scores["qat", target]
        assert qat >= 0.9 and qat - ptq >= 0.3, (target, scores)

    # the learned QDQ model is what ONNX Runtime runs and what OpenVINO converted
    qat_run = results["qat"]
    learned = qat_run.run_dir / "compress" / "1-qat" / "learned.qdq.onnx"
    by_target = {r.artifact.target: r.artifact for r in qat_run.artifacts}
    assert by_target["onnxruntime"].main_file.read_bytes() == learned.read_bytes()
    for artifact in by_target.values():
        assert artifact.options["quantization"]["ranges"] == LEARNED_RANGES
    import openvino as ov

    ops = {op.get_type_name() for op in ov.Core().read_model(str(by_target["openvino"].main_file)).get_ops()}
    assert "FakeQuantize" in ops
    assert all("ranges" not in r.artifact.options["quantization"] for r in results["ptq"].artifacts)
    notes = qat_run.compression[0]["notes"]
    assert notes["learned"] == "learned.qdq.onnx" and notes["validation_agreement"] > notes["validation_agreement_ptq"]


def context(spec: TensorSpec, x: np.ndarray, teacher, tmp_path) -> CompressContext:
    return CompressContext(inputs=[spec], calibration=CalibrationSet(inputs={spec.name: x}, source="npy", seed=0),
                           teacher=teacher, base_dir=tmp_path, outputs=["logits"], class_scores=["logits"],
                           out_dir=tmp_path)


def test_token_inputs_are_one_config_error(tmp_path):
    spec = TensorSpec(name="input_ids", shape=["batch", 8], dtype="int64")
    model = torch.nn.Sequential(torch.nn.Embedding(16, 4), torch.nn.Flatten(), torch.nn.Linear(32, 2))
    with pytest.raises(ConfigError, match=r"qat: input\(s\) input_ids \(int64\) are not float"):
        compress(model, Qat(), context(spec, np.zeros((8, 8), np.int64), model, tmp_path))


class Branching(torch.nn.Module):
    """Control flow on data: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.sum() > 0 else self.conv(-x)


def test_an_untraceable_model_is_one_config_error(tmp_path):
    spec = TensorSpec(name="image", shape=["batch", 1, 8, 8])
    model = Branching().eval()
    with pytest.raises(ConfigError, match="qat needs the model.s graph, and torch.fx cannot trace it"):
        compress(model, Qat(), context(spec, np.zeros((8, 1, 8, 8), np.float32), model, tmp_path))


@pytest.mark.onnxruntime
def test_learned_ranges_past_relu6_still_let_onnx_runtime_run_every_conv_in_int8(tmp_path):
    """QAT's ranges after a ReLU6 drift past 6 (EfficientNet-Lite0: up to 6.014). ONNX Runtime drops
    the Clip before a QuantizeLinear only when the range stays within [0, 6]; a Clip left in place
    keeps its Conv in float (there: 7.4 ms instead of 2.3). Freezing pulls the ranges back, so
    every Conv but the last (its output is the model's, float) is a QLinearConv in ORT's optimized
    graph and no Clip remains."""
    import onnx
    import onnxruntime as ort
    from torch import nn

    from edgeport.pipeline.compress.quantsim import act_quants, build_sim, calibrate, export_qdq, freeze

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
                          nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(16, 3, 12, 12)
    sim = build_sim(model)
    calibrate(sim, [(x,)])
    drifted = [a for a in act_quants(sim) if a.clips == (0.0, 6.0)]
    assert len(drifted) == 2
    for a in drifted:
        a.set_range(-0.05, 6.02)  # what training leaves: a little below 0 and past 6
    freeze(sim)
    path = tmp_path / "learned.qdq.onnx"
    export_qdq(sim, path, (x[:1],), [True], ["x"], ["y"], 17)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "Clip" not in ops and ops.count("QLinearConv") == 2, ops
