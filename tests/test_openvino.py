"""OpenVINO target: IR fp32/fp16, NNCF int8, verified with the f32 precision hint."""

from __future__ import annotations

import numpy as np
import pytest

from edgeport import load_config, run
from tests.conftest import write_config
from tests.models import ATTENTION_MODEL

pytestmark = pytest.mark.openvino

OV = '[targets.openvino]\nprecisions = ["fp32", "fp16", "int8"]\nhint = ["f32", "bf16"]\n'


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, model_cache):
    folder = tmp_path_factory.mktemp("ov")
    return run(load_config(write_config(folder, targets=OV)))


def test_digits_int8_within_one_point_and_fp16_close(digits_run):
    arts = {r.artifact.precision: r for r in digits_run.artifacts}
    assert [r.artifact.precision for r in digits_run.artifacts] == ["fp32", "fp16", "int8"]
    assert all(r.verify.passed for r in digits_run.artifacts), digits_run.failures
    assert arts["fp32"].verify.cosine >= 0.9999
    assert arts["fp16"].verify.cosine >= 0.999
    assert (arts["fp32"].verify.accuracy - arts["int8"].verify.accuracy) * 100 <= 1.0
    assert arts["fp16"].artifact.size_bytes < 0.6 * arts["fp32"].artifact.size_bytes
    assert arts["int8"].artifact.options["quantization"]["model_type"] == "cnn"


def test_ir_files_and_hints_are_recorded(digits_run):
    for r in digits_run.artifacts:
        assert [f.path for f in r.artifact.files] == ["model.xml", "model.bin"]
        ran = {b.options["hint"]: b.options for b in r.bench}
        assert set(ran) == {"f32", "bf16"}
        assert ran["f32"]["inference_precision"] == "f32"
        assert ran["f32"]["performance_hint"] == "LATENCY" and ran["f32"]["streams"] == 1


def test_attention_block_int8_cosine(tmp_path):
    config = write_config(tmp_path, model=ATTENTION_MODEL, targets='[targets.openvino]\nprecisions = ["fp32", "int8"]\n')
    result = run(load_config(config), until="verify")
    assert result.reference_accuracy > 0.9  # a trained model on real data, not noise
    int8 = next(r for r in result.artifacts if r.artifact.precision == "int8")
    assert int8.artifact.options["quantization"]["model_type"] == "transformer"  # detected from the graph
    scheme = int8.artifact.options["quantization"]
    assert set(scheme["smooth_quant_probe_cosine"]) == {"on", "off"}  # both tried, the closer one kept
    assert int8.verify.cosine >= 0.999, (int8.verify, scheme)


def first_conv_integers(xml_path) -> np.ndarray:
    """The int8 values NNCF stored for the first Convolution's weight (Constant i8 -> Convert -> Multiply)."""
    import openvino as ov

    conv = next(op for op in ov.Core().read_model(str(xml_path)).get_ordered_ops()
                if op.get_type_name() == "Convolution")
    convert = conv.input_value(1).get_node().input_value(0).get_node()
    return convert.input_value(0).get_node().get_data()


def test_overflow_fix_disabled_gives_the_first_layer_the_full_int8_range(digits_run, tmp_path):
    # NNCF's default halves the first layer's weight range (a guard for CPUs without VNNI)
    default = next(r for r in digits_run.artifacts if r.artifact.precision == "int8")
    config = write_config(tmp_path, targets='[targets.openvino]\nprecisions = ["int8"]\noverflow_fix = "disable"\n')
    full = run(load_config(config), until="verify").artifacts[0]
    assert full.artifact.options["quantization"]["overflow_fix"] == "disable"
    assert np.abs(first_conv_integers(default.artifact.main_file)).max() <= 64
    assert np.abs(first_conv_integers(full.artifact.main_file)).max() == 127
    assert full.verify.passed, full.verify
