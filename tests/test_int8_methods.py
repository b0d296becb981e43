"""Post-training int8 preparation (equalize, bias-correction, adaround): each measurably beats plain
int8 through ONNX Runtime's own QDQ quantization, on a model built to be hard for int8, judged
against the ORIGINAL float model on photo crops calibration never saw."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeport import load_config, run
from edgeport.pipeline.compress import (
    METHODS, AdaRound, BiasCorrection, CompressContext, Equalize, compress,
)
from edgeport.pipeline.compress.configs import LowRank
from edgeport.pipeline.compress.int8sim import weight_scale
from edgeport.pipeline.interchange import export_onnx
from edgeport.pipeline.model_loading import LoadedModel, state_digest
from edgeport.types import CalibrationSet, TensorSpec
from tests.conftest import REPO, write_config
from tests.models import hard_int8_net, write_photo_crops

pytestmark = pytest.mark.onnxruntime
INPUTS = [TensorSpec(name="image", shape=["batch", 3, 16, 16])]
OUTPUTS = [TensorSpec(name="logits", shape=["batch", 10])]
FAST_ADAROUND = AdaRound(iterations=200, batch=8)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crops")
    write_photo_crops(folder, 128, seed=0, name="calibration.npy")
    write_photo_crops(folder, 256, seed=1, name="evaluation.npy")  # other crops, never calibrated on
    return folder


def ort_int8(model: torch.nn.Module, calibration: np.ndarray, folder) -> onnx.ModelProto:
    """ONNX Runtime static QDQ int8 as the onnxruntime target builds it: per-channel int8 weights,
    per-tensor uint8 activations, minmax ranges."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    export_onnx(LoadedModel(model, INPUTS, OUTPUTS, state_digest(model)), folder / "fp32.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": calibration[i:i + 32]} for i in range(0, len(calibration), 32)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(folder / "fp32.onnx"), str(folder / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return onnx.load(str(folder / "int8.onnx"))


def judge(int8_file, crops) -> dict:
    """Agreement of an int8 file with the original float model on the held-out crops: SQNR of the
    centred logits (a constant bias would flatter a plain one) and top-1 agreement."""
    import onnxruntime as ort

    x = np.load(crops / "evaluation.npy")
    with torch.no_grad():
        ref = hard_int8_net()(torch.from_numpy(x)).numpy()
    out = ort.InferenceSession(str(int8_file)).run(None, {"image": x})[0]
    signal = ((ref - ref.mean(0)) ** 2).sum()
    return {"sqnr_db": float(10 * np.log10(signal / ((out - ref) ** 2).sum())),
            "top1": float(np.mean(out.argmax(1) == ref.argmax(1)))}


@pytest.fixture(scope="module")
def measured(crops, tmp_path_factory):
    """Plain int8 and int8 after each method (and after chains of them), through ONNX Runtime."""
    calibration = np.load(crops / "calibration.npy")
    context = CompressContext(inputs=INPUTS, calibration=CalibrationSet(inputs={"image": calibration}, source="t", seed=0),
                              teacher=hard_int8_net(), base_dir=REPO)
    recipes = {"plain": [], "equalize": [Equalize()], "bias-correction": [BiasCorrection()],
               "adaround": [FAST_ADAROUND], "equalize+adaround": [Equalize(), FAST_ADAROUND]}
    results = {}
    for name, steps in recipes.items():
        model = hard_int8_net()
        for step in steps:
            model, _ = compress(model, step, context)
        folder = tmp_path_factory.mktemp(name)
        results[name] = {"model": model, "onnx": ort_int8(model, calibration, folder),
                         **judge(folder / "int8.onnx", crops)}
    return results


def test_the_model_is_hard_for_plain_int8(measured):
    assert measured["plain"]["sqnr_db"] < 6 and measured["plain"]["top1"] < 0.8


def test_equalization_is_exact_in_float_and_rescues_int8(measured, crops):
    x = torch.from_numpy(np.load(crops / "evaluation.npy"))
    with torch.no_grad():
        assert torch.allclose(measured["equalize"]["model"](x), hard_int8_net()(x), atol=1e-5)
    plain, equalized = measured["plain"], measured["equalize"]
    assert equalized["sqnr_db"] > plain["sqnr_db"] + 15  # measured 3.2 -> 29.1 dB
    assert equalized["top1"] >= 0.97  # measured 0.605 -> 0.992


def test_bias_correction_beats_plain_int8(measured):
    assert measured["bias-correction"]["sqnr_db"] > measured["plain"]["sqnr_db"] + 4  # measured 3.2 -> 9.4 dB
    assert measured["bias-correction"]["top1"] > measured["plain"]["top1"] + 0.15  # 0.605 -> 0.926


def test_adaround_beats_nearest_rounding(measured):
    assert measured["adaround"]["sqnr_db"] > measured["plain"]["sqnr_db"] + 1.5  # measured 3.2 -> 5.4 dB
    # once equalization has fixed the activations, the weights' rounding is what is left
    assert measured["equalize+adaround"]["sqnr_db"] > measured["equalize"]["sqnr_db"] + 1.5  # 29.1 -> 32.5 dB


def test_onnx_runtime_quantizes_adarounded_weights_to_exactly_the_learned_integers(measured):
    model = measured["adaround"]["model"]
    graph = measured["adaround"]["onnx"].graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    dequantized = [tensors[n.input[0]] * tensors[n.input[1]].reshape(-1, *[1] * (tensors[n.input[0]].ndim - 1))
                   for n in graph.node if n.op_type == "DequantizeLinear" and tensors.get(n.input[0]) is not None
                   and tensors[n.input[0]].dtype == np.int8]
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert len(dequantized) == len(layers) == 5
    for layer in layers:
        weight = layer.weight.detach()
        levels = weight / weight_scale(weight)
        assert torch.allclose(levels, levels.round(), atol=1e-4)  # on the grid...
        runtime = next(d for d in dequantized if d.shape == tuple(weight.shape))
        assert np.allclose(runtime, weight.numpy(), rtol=0, atol=1e-3 * float(weight_scale(weight).min()))  # ...its own


def test_the_steps_are_configs_like_the_others():
    for config in (Equalize(through_relu6=True), BiasCorrection(samples=32), AdaRound(iterations=10)):
        assert config.model_validate(config.model_dump()) == config and config.method in METHODS
        assert config.int8_preparation
    assert not LowRank().int8_preparation


def test_through_the_pipeline_equalize_then_bias_correction(crops, measured, tmp_path):
    """edgeport.run with the steps as [[compress]]: its int8 artifact beats plain int8 as much."""
    model = ('[model]\nsource = "tests.models:hard_int8_net"\n'
             'inputs = [{ name = "image", shape = ["batch", 3, 16, 16] }]\noutput_names = ["logits"]\n')
    data = (f'[data]\nsource = "npy"\npath = "{crops / "calibration.npy"}"\n'
            f'eval_path = "{crops / "evaluation.npy"}"\ncalibration_samples = 128\n')
    steps = '[[compress]]\nmethod = "equalize"\n[[compress]]\nmethod = "bias-correction"\n'
    lenient = "[verify.tolerances.int8]\nmin_cosine = 0.0\nmax_accuracy_drop = 100\n"
    config = write_config(tmp_path, steps + lenient, model=model, data=data,
                          targets='[targets.onnxruntime]\nprecisions = ["int8"]\n')
    result = run(load_config(config), until="verify")
    assert [row["step"] for row in result.compression] == ["equalize", "bias-correction"]
    assert result.compression[0]["notes"]["pairs"] == 3
    score = judge(result.artifacts[0].artifact.main_file, crops)
    assert score["sqnr_db"] > measured["plain"]["sqnr_db"] + 15 and score["top1"] >= 0.97
