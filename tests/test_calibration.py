"""Calibration data sources: image folders, arrays, callables; bad data is one line and exit 2."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgeport import load_config, run
from edgeport.calibration.digits import digits_split
from edgeport.cli import app
import edgeport
from tests.conftest import message_lines, write_config

PRE = "preprocessing = { scale = 0.00392156862745098, channel_order = \"gray\", layout = \"NCHW\" }\n"
ORT_INT8 = '[targets.onnxruntime]\nprecisions = ["int8"]\n'


def write_digit_folders(root, images: np.ndarray, labels: np.ndarray) -> None:
    """Digits as 8-bit PNG files, one sub-folder per class."""
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(folder / f"{i:04d}.png")


def one_line_error(tmp_path, data: str, pattern: str, targets: str = ORT_INT8):
    out = CliRunner().invoke(app, ["run", str(write_config(tmp_path, data=data, targets=targets))])
    assert out.exit_code == 2, out.output
    lines = message_lines(out.output)
    assert len(lines) == 1 and pattern in lines[0], out.output


@pytest.mark.onnxruntime
@pytest.mark.slow
def test_image_folder_calibrates_like_the_array_source(tmp_path, model_cache):
    x_train, y_train, x_test, y_test = digits_split()
    write_digit_folders(tmp_path / "train", x_train, y_train)
    write_digit_folders(tmp_path / "test", x_test, y_test)
    folder = ('[data]\nsource = "images"\npath = "train"\neval_path = "test"\ncalibration_samples = 256\n' + PRE)
    from_images = run(load_config(write_config(tmp_path, data=folder, targets=ORT_INT8, name="img")), until="verify")
    (tmp_path / "arr").mkdir()
    from_arrays = run(load_config(write_config(tmp_path / "arr", data='[data]\nsource = "digits"\ncalibration_samples = 256\n',
                                               targets=ORT_INT8, name="arr")), until="verify")
    a, b = from_images.artifacts[0].verify, from_arrays.artifacts[0].verify
    assert a.samples == b.samples == len(y_test) and a.passed and b.passed
    assert abs(a.accuracy - b.accuracy) * 100 <= 0.5, (a.accuracy, b.accuracy)


def test_callable_source(tmp_path, model_cache):
    (tmp_path / "feed.py").write_text(
        "import numpy as np\n"
        "def samples():\n"
        "    rng = np.random.default_rng(0)\n"
        "    for i in range(300):\n"
        "        yield {'image': rng.random((1, 8, 8), dtype=np.float32), 'labels': i % 10}\n")
    data = '[data]\nsource = "callable"\nfunction = "feed.py:samples"\ncalibration_samples = 100\neval_samples = 50\n'
    result = run(load_config(write_config(tmp_path, data=data, targets='[targets.onnxruntime]\nprecisions = ["fp32"]\n')),
                 until="verify")
    assert result.artifacts[0].verify.samples == 50 and result.artifacts[0].verify.passed


def test_empty_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    one_line_error(tmp_path, '[data]\nsource = "images"\npath = "imgs"\n' + PRE, "no images")


def test_unreadable_image(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png at all")
    one_line_error(tmp_path, '[data]\nsource = "images"\npath = "imgs"\n' + PRE, "broken.png: cannot read this image")


def test_mixed_sizes_without_resize(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "imgs" / "a.png")
    Image.new("L", (9, 8)).save(tmp_path / "imgs" / "b.png")
    one_line_error(tmp_path, '[data]\nsource = "images"\npath = "imgs"\n' + PRE, "set resize")


def test_inf_in_npy(tmp_path):
    data = np.random.default_rng(0).random((300, 1, 8, 8), dtype=np.float32)
    data[3, 0, 0, 0] = np.inf
    np.save(tmp_path / "x.npy", data)
    one_line_error(tmp_path, '[data]\nsource = "npy"\npath = "x.npy"\ncalibration_samples = 64\n', "NaN or Inf")


def test_fewer_samples_than_asked_names_the_count(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((40, 1, 8, 8), np.float32))
    one_line_error(tmp_path, '[data]\nsource = "npy"\npath = "x.npy"\ncalibration_samples = 64\n', "40 samples found")


def test_overlap_between_calibration_and_evaluation(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((300, 1, 8, 8), dtype=np.float32))
    one_line_error(tmp_path, '[data]\nsource = "npy"\npath = "x.npy"\neval_path = "x.npy"\ncalibration_samples = 64\n',
                   "are in both the calibration and the evaluation set")


def test_random_source_warns(tmp_path, caplog, model_cache):
    data = '[data]\nsource = "random"\ncalibration_samples = 16\neval_samples = 8\n'
    with caplog.at_level("WARNING", logger="edgeport"):
        run(load_config(write_config(tmp_path, data=data, targets='[targets.onnxruntime]\nprecisions = ["fp32"]\n')),
            until="export")
    assert "meaningless" in caplog.text


OUTLIER_MODEL = '[model]\nsource = "tests.models:outlier_mlp"\ninputs = [{ name = "x", shape = ["batch", 64] }]\n'
GAUSSIAN = '[data]\nsource = "npy"\npath = "x.npy"\ncalibration_samples = 128\n'


def outlier_config(folder, target: str, name: str, options: str = ""):
    """The outlier model on Gaussian inputs, int8 on one target; the plain run tolerates its bad cosine."""
    if not (folder / "x.npy").exists():
        np.save(folder / "x.npy", np.random.default_rng(0).standard_normal((400, 64)).astype(np.float32))
    tolerance = "" if options else "[verify.tolerances.int8]\nmin_cosine = 0.5\n"
    return write_config(folder, model=OUTLIER_MODEL, data=GAUSSIAN, name=name, body=tolerance,
                        targets=f'[targets.{target}]\nprecisions = ["int8"]\n{options}')


@pytest.mark.onnxruntime
def test_the_outlier_layer_is_ranked_first_and_kept_in_float(tmp_path):
    """fc1's activation has one channel 1000x the others: one int8 scale crushes the rest."""
    result = run(load_config(outlier_config(tmp_path, "onnxruntime", "plain")))
    int8 = result.artifacts[0]
    assert int8.sensitivity[0]["tensor"] == "relu" and int8.sensitivity[0]["op"] in ("Gemm", "Relu")
    activations = [r for r in int8.sensitivity if not r["op"].endswith(" weight")]
    assert activations[0]["output_sqnr_db"] < activations[1]["output_sqnr_db"] - 20
    # Weights are ranked too: fc2's column 7 is 1000x smaller than the rest of each row, so per-row
    # int8 rounds it to zero, and that weight costs more than any other activation.
    weights = {r["tensor"]: r for r in int8.sensitivity if r["op"] == "Gemm weight"}
    assert len(weights) == 3 and int8.sensitivity[1] is weights[min(weights, key=lambda w: weights[w]["output_sqnr_db"])]
    assert int8.sensitivity[1]["output_sqnr_db"] < activations[1]["output_sqnr_db"] - 10
    assert int8.verify.cosine < 0.9  # all-int8 is badly off
    out = CliRunner().invoke(app, ["calibrate", "report", str(result.run_dir)])
    assert out.exit_code == 0 and out.output.index("relu") < out.output.index("x ")
    assert (result.run_dir / "sensitivity-onnxruntime-int8.png").is_file()

    result = run(load_config(outlier_config(tmp_path, "onnxruntime", "aware", "min_cosine = 0.999\n")), until="verify")
    int8 = result.artifacts[0]
    record = int8.artifact.options["quantization"]["accuracy_aware"]
    assert record["float_tensors"] == ["relu"] and record["met"]
    assert record["size_bytes"] > record["size_bytes_all_int8"]  # what keeping it in float cost
    assert int8.verify.cosine >= 0.999  # on the held-out evaluation data, not the calibration data


@pytest.mark.onnxruntime
def test_a_conv_kept_in_float_stays_float_when_onnxruntime_loads_it(tmp_path, model_cache):
    """ONNX Runtime's WeightBiasQuantization pass quantizes, per tensor and at load, the float
    weights of a Conv whose input comes from a DequantizeLinear: the layer a fallback kept in float
    ran as int8 after all (on EfficientNet-Lite0, worse than plain int8). The artifact must survive it."""
    import onnx
    import onnxruntime as ort

    first = run(load_config(write_config(tmp_path, name="plain", targets=ORT_INT8)), until="export")
    convs = [n.name for n in onnx.load(str(first.run_dir / "interchange" / "model.onnx")).graph.node if n.op_type == "Conv"]
    kept = convs[1]  # its input is the first conv's int8 output
    targets = f'{ORT_INT8}nodes_to_exclude = ["{kept}"]\n'
    int8 = run(load_config(write_config(tmp_path, name="kept", targets=targets)), until="verify").artifacts[0]
    assert int8.artifact.options["quantization"]["float_inputs_per_channel"] == [kept]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "as-loaded.onnx")
    ort.InferenceSession(str(int8.artifact.main_file), options, providers=["CPUExecutionProvider"])
    loaded = onnx.load(str(tmp_path / "as-loaded.onnx")).graph
    (node,) = [n for n in loaded.node if n.name == kept]
    floats = {t.name for t in loaded.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert node.input[1] in floats  # its weight as exported, not a per-tensor int8 copy ORT made
    assert int8.verify.passed and int8.verify.accuracy > 0.95


@pytest.mark.onnxruntime
def test_calibration_methods_side_by_side_in_one_report(tmp_path, model_cache):
    targets = '[targets.onnxruntime]\nprecisions = ["int8"]\ncalibration_method = ["minmax", "entropy", "percentile"]\n'
    result = run(load_config(write_config(tmp_path, targets=targets)))
    variants = {r.artifact.variant: r for r in result.artifacts}
    assert set(variants) == {"minmax", "entropy", "percentile"}
    for method, r in variants.items():
        assert r.artifact.options["quantization"]["calibration_method"] == method
        assert r.verify.passed and r.verify.accuracy > 0.95 and r.verify.cosine > 0.99
    assert len({r.artifact.files[0].sha256 for r in result.artifacts}) >= 2  # the methods really differ
    report = (result.run_dir / "report.md").read_text()
    for method in variants:
        assert f"| onnxruntime | int8 | {method} |" in report


def test_an_unsupported_combination_lists_what_the_target_has(tmp_path):
    one_line_error(tmp_path, "", "Input should be 'minmax', 'entropy' or 'percentile'",
                   targets='[targets.onnxruntime]\ncalibration_method = "kl"\n')
    one_line_error(tmp_path, "", "unknown key 'calibration_method'",
                   targets='[targets.openvino]\ncalibration_method = "entropy"\n')


@pytest.mark.openvino
def test_openvino_ranks_the_outlier_first_and_keeps_it_in_float(tmp_path):
    int8 = run(load_config(outlier_config(tmp_path, "openvino", "plain")), until="verify").artifacts[0]
    assert int8.sensitivity[0]["tensor"] == "node_relu"  # the activation with the outlier channel
    activations = [r for r in int8.sensitivity if not r["op"].endswith(" weight")]
    assert activations[0]["output_sqnr_db"] < activations[1]["output_sqnr_db"] - 10
    # then fc2's int8 weight, whose column 7 (1000x smaller) NNCF's per-row scale rounds to zero
    assert int8.sensitivity[1]["op"] == "MatMul weight" and int8.sensitivity[1]["nodes"] == ["node_linear_1/WithoutBiases"]
    assert int8.verify.cosine < 0.999
    int8 = run(load_config(outlier_config(tmp_path, "openvino", "aware", "min_cosine = 0.999\n")),
               until="verify").artifacts[0]
    record = int8.artifact.options["quantization"]["accuracy_aware"]
    assert record["float_tensors"][0] == "node_relu" and record["met"]
    assert int8.verify.cosine >= 0.999


@pytest.mark.onnxruntime
def test_accuracy_budget_in_points_with_labelled_data(tmp_path):
    """Labels here are the float model's own predictions, so float accuracy is 100%."""
    import torch

    from tests.models import outlier_mlp

    x = np.random.default_rng(0).standard_normal((400, 64)).astype(np.float32)
    with torch.no_grad():
        labels = outlier_mlp()(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(tmp_path / "x.npz", x=x, labels=labels)
    data = '[data]\nsource = "npy"\npath = "x.npz"\ncalibration_samples = 128\n'
    config = write_config(tmp_path, model=OUTLIER_MODEL, data=data,
                          targets='[targets.onnxruntime]\nprecisions = ["int8"]\nmax_accuracy_drop = 1.0\n')
    result = run(load_config(config))
    int8 = result.artifacts[0]
    aware = int8.artifact.options["quantization"]["accuracy_aware"]
    assert aware["met"] and aware["float_tensors"][0] == "relu"
    assert aware["steps"][0]["accuracy"] < 0.95 <= aware["steps"][-1]["accuracy"]
    assert aware["p50_ms"] > 0 and aware["p50_ms_all_int8"] > 0
    assert (int8.verify.reference_accuracy - int8.verify.accuracy) * 100 <= 1.0  # on held-out data
    assert "Accuracy-aware (met" in (result.run_dir / "report.md").read_text()


@pytest.mark.openvino
def test_openvino_range_estimators_and_presets(tmp_path, model_cache):
    targets = ('[targets.openvino]\nprecisions = ["int8"]\npreset = "mixed"\nrange_estimator = "mean_quantile"\n'
               'per_channel = false\n')
    int8 = run(load_config(write_config(tmp_path, targets=targets)), until="verify").artifacts[0]
    scheme = int8.artifact.options["quantization"]
    assert scheme["preset"] == "mixed" and scheme["range_estimator"] == "mean_quantile" and not scheme["per_channel"]
    assert int8.verify.passed and int8.verify.cosine > 0.99


@pytest.mark.onnxruntime
def test_entropy_calibration_is_not_minmax_in_disguise(tmp_path, model_cache):
    """With quantize_static's defaults ORT's entropy search has one candidate (the full range) and
    wrote a model byte-identical to minmax; edgeport runs it with 2048 bins instead."""
    import onnx
    from onnx import numpy_helper

    config = write_config(tmp_path, targets='[targets.onnxruntime]\nprecisions = ["int8"]\n'
                                            'calibration_method = ["minmax", "entropy"]\n')
    built = {a.variant: a for a in edgeport.export(load_config(config))}

    def activation_scales(artifact) -> dict[str, float]:
        model = onnx.load(str(artifact.main_file))
        consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        return {n.input[0]: float(consts[n.input[1]]) for n in model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in consts and consts[n.input[1]].size == 1}

    minmax, entropy = activation_scales(built["minmax"]), activation_scales(built["entropy"])
    assert built["minmax"].files[0].sha256 != built["entropy"].files[0].sha256
    # KL thresholds clip outliers: never wider than the observed range, narrower somewhere.
    assert all(entropy[t] <= minmax[t] * 1.0001 for t in minmax)
    assert any(entropy[t] < minmax[t] * 0.95 for t in minmax)
