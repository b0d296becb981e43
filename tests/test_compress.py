"""Compression: what each method buys, measured; bad configs are one line and exit 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgeport import load_config, run
from edgeport.cli import app
from edgeport.errors import ConfigError
from edgeport.pipeline.compress import (
    METHODS, AdaRound, BiasCorrection, CompressContext, Distill, Equalize, LowRank, PruneStructured,
    PruneUnstructured, Qat, compress, Cluster, Training,
)
from edgeport.pipeline.compress.measure import macs, parameters, sizes
from edgeport.pipeline.interchange import export_onnx
from edgeport.pipeline.model_loading import LoadedModel, state_digest
from edgeport.types import CalibrationSet, TensorSpec
from tests.conftest import REPO, message_lines, write_config
from tests.models import residual_net, wide_mlp, wide_mlp_inputs

IMAGE = [TensorSpec(name="image", shape=["batch", 1, 8, 8])]


def context(specs, teacher, samples: np.ndarray) -> CompressContext:
    calibration = CalibrationSet(inputs={specs[0].name: samples}, source="test", seed=0)
    return CompressContext(inputs=specs, calibration=calibration, teacher=teacher, base_dir=REPO)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("config", [
    PruneStructured(ratio=0.25), PruneUnstructured(ratio=0.5), LowRank(), LowRank(algorithm="svd", energy=0.9),
    Distill(data="digits", epochs=1), Equalize(), BiasCorrection(samples=16), AdaRound(iterations=5), Qat(steps=2),
    Cluster(clusters=4, fine_tune=Training(data="digits", epochs=1)),
], ids=lambda c: f"{c.method}-{getattr(c, 'algorithm', '')}".rstrip("-"))
def test_every_method_round_trips_its_config_and_keeps_the_model_runnable(config):
    assert config.model_validate(config.model_dump()) == config and config.version == type(config)().version
    model = residual_net()
    teacher = residual_net()
    samples = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
    new, notes = compress(model, config, context(IMAGE, teacher, samples))
    assert new(torch.from_numpy(samples)).shape == (32, 10)
    assert isinstance(notes, dict)


def test_unknown_config_lists_what_exists():
    with pytest.raises(ConfigError, match="known: prune-structured, prune-unstructured, low-rank, distill, qat"):
        compress(residual_net(), object(), None)
    assert METHODS[:4] == ("prune-structured", "prune-unstructured", "low-rank", "distill")
    assert {"qat", "equalize", "bias-correction", "adaround", "cluster"} <= set(METHODS)


def test_a_version_1_low_rank_config_keeps_its_meaning():
    """Version 2 made the activation-aware SVD the default; version 1 meant plain SVD of Linear and 1x1 Conv."""
    assert LowRank(version=1).model_dump() == LowRank(algorithm="svd", convolutions="1x1", version=1).model_dump()
    assert LowRank(version=1).rank_rule() == ("energy", 0.9) and LowRank().rank_rule() == ("max_layer_error", 0.1)


def test_pruning_a_residual_model_keeps_it_consistent_and_exportable(tmp_path):
    model = residual_net()
    samples = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    before = macs(model, (torch.zeros(1, 1, 8, 8),))
    pruned, _ = compress(model, PruneStructured(ratio=0.5), context(IMAGE, residual_net(), samples))
    assert pruned.stem.out_channels == pruned.block[2].out_channels == 8  # both sides of the add pruned alike
    assert pruned.head[2].out_features == 10  # the output layer is kept whole
    assert macs(pruned, (torch.zeros(1, 1, 8, 8),)) < 0.4 * before
    export_onnx(LoadedModel(pruned, IMAGE, [TensorSpec(name="logits", shape=["batch", 10])], state_digest(pruned)),
                tmp_path / "pruned.onnx")
    import onnxruntime as ort

    out = ort.InferenceSession(str(tmp_path / "pruned.onnx")).run(None, {"image": samples})[0]
    with torch.no_grad():
        assert np.allclose(out, pruned(torch.from_numpy(samples)).numpy(), atol=1e-4)


def test_unstructured_pruning_shrinks_only_the_zip_size():
    model = residual_net()
    raw, zipped = sizes(model)
    pruned, notes = compress(model, PruneUnstructured(ratio=0.8), context(IMAGE, residual_net(), np.zeros((4, 1, 8, 8), np.float32)))
    raw2, zipped2 = sizes(pruned)
    assert notes["zero_weights"] / notes["of_weights"] == pytest.approx(0.8, abs=0.01)
    assert abs(raw2 - raw) < 64 and zipped2 < 0.6 * zipped
    assert "no speed" in notes["note"] or "dense runtimes" in notes["note"]


def test_plain_svd_low_rank_on_a_wide_mlp(tmp_path):
    """90% of each layer's singular-value energy keeps the outputs (cosine >= 0.99) when the
    layers' strong directions are the ones their inputs use, as in trained models."""
    energy, min_cosine = 0.9, 0.99
    specs = [TensorSpec(name="x", shape=["batch", 64])]
    original = wide_mlp()
    x = wide_mlp_inputs(512)
    with torch.no_grad():
        ref = original(x)
    factorised, notes = compress(wide_mlp(), LowRank(algorithm="svd", energy=energy), context(specs, original, x.numpy()))
    assert len(notes["factorised"]) >= 2
    assert parameters(factorised) < 0.3 * parameters(original)
    with torch.no_grad():
        assert cosine(factorised(x), ref) >= min_cosine
    out = [TensorSpec(name="y", shape=["batch", 10])]
    export_onnx(LoadedModel(original, specs, out, "a"), tmp_path / "full.onnx")
    export_onnx(LoadedModel(factorised, specs, out, "b"), tmp_path / "low.onnx")
    assert (tmp_path / "low.onnx").stat().st_size < 0.5 * (tmp_path / "full.onnx").stat().st_size


def test_a_layer_is_only_factorised_when_that_saves_parameters():
    _, notes = compress(residual_net(), LowRank(energy=1.0), context(IMAGE, residual_net(), np.zeros((4, 1, 8, 8), np.float32)))
    assert notes["factorised"] == {}  # full energy means full rank: nothing saved, nothing replaced


@pytest.mark.onnxruntime
@pytest.mark.slow
def test_pruned_and_distilled_digits_example(tmp_path, model_cache):
    """The digits-pruned example, with int8 to ONNX Runtime only and a short benchmark."""
    config = load_config(REPO / "examples" / "digits-pruned.toml",
                         {"runs_dir": str(tmp_path / "runs"), "bench.min_seconds": 0.2, "bench.iterations": 50})
    config.targets = {"onnxruntime": {"precisions": ["int8"]}}
    result = run(config)
    prune, distil = result.compression
    assert prune["step"] == "prune-structured" and distil["step"] == "distill"
    assert prune["macs_after"] <= 0.6 * prune["macs_before"]
    # distillation recovers what pruning cost: within 1.5 points of the unpruned fp32 model
    assert (prune["accuracy_before"] - distil["accuracy_after"]) * 100 <= 1.5
    assert distil["accuracy_after"] > prune["accuracy_after"] + 0.02
    assert result.artifacts[0].verify.passed
    report = (result.run_dir / "report.md").read_text()
    assert "## Compression" in report and "| prune-structured |" in report
    import json

    assert json.loads((result.run_dir / "report.json").read_text())["compression"][0]["params_after"] < prune["params_before"]


def run_cli(tmp_path, body: str):
    config = write_config(tmp_path, body)
    return CliRunner().invoke(app, ["compress", "--config", str(config)])


@pytest.mark.parametrize("body, message", [
    ('[[compress]]\nmethod = "prune-structured"\nratio = 1.0\n', "compress.0.prune-structured.ratio: Input should be less than 1"),
    ('[[compress]]\nmethod = "prune-structured"\nratio = -0.1\n', "greater than or equal to 0"),
    ('[[compress]]\nmethod = "distill"\n', "distill needs a training data source"),
    ('[[compress]]\nmethod = "prune-strctured"\n', "prune-structured"),
    ('[[compress]]\nmethod = "prune-structured"\nignore = ["classifer.3"]\n', 'did you mean "classifier.3"'),
    ('[[compress]]\nmethod = "cluster"\nclusters = 1\n', "compress.0.cluster.clusters: Input should be greater than or equal to 2"),
    ('[[compress]]\nmethod = "cluster"\nfine_tune = { epochs = 2 }\n', "cluster fine_tune needs a training data source"),
    ('[[compress]]\nmethod = "cluster"\nignore = ["classifer.3"]\n', 'did you mean "classifier.3"'),
    ('[[compress]]\nmethod = "low-rank"\nenergy = 0.9\nrank_ratio = 0.5\n', "set one of max_layer_error, energy, rank_ratio"),
    ('[[compress]]\nmethod = "low-rank"\nalgorithm = "svd"\nmax_layer_error = 0.1\n', "max_layer_error needs algorithm"),
])
def test_bad_compression_configs_are_one_line(tmp_path, body, message):
    out = run_cli(tmp_path, body)
    assert out.exit_code == 2, out.output
    lines = message_lines(out.output)
    assert len(lines) == 1 and message in lines[0], out.output


def test_pruning_a_model_torch_pruning_cannot_trace(tmp_path):
    model = ('[model]\nsource = "tests.models:not_traceable"\n'
             'inputs = [{ name = "image", shape = ["batch", 1, 8, 8] }]\n')
    config = write_config(tmp_path, '[[compress]]\nmethod = "prune-structured"\n', model=model)
    out = CliRunner().invoke(app, ["compress", "--config", str(config)])
    assert out.exit_code == 2, out.output
    assert "torch-pruning cannot" in out.output
