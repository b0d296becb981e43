"""Bad input ends with one line naming the problem and exit code 2 (not a traceback)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeport.cli import app
from tests.conftest import message_lines, write_config

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output.strip()


def assert_one_line_error(code, output, pattern):
    assert code == 2, output
    lines = message_lines(output)
    assert len(lines) == 1, output
    assert lines[0].startswith("error:")
    assert pattern in lines[0], lines[0]


MODEL = """
[model]
source = "{source}"
inputs = [{{ name = "image", shape = {shape}, dtype = "float32" }}]
"""


def model_section(source="edgeport.examples.digits:trained_cnn", shape='["batch", 1, 8, 8]'):
    return MODEL.format(source=source, shape=shape)


def test_missing_config_file(tmp_path):
    assert_one_line_error(*invoke("run", tmp_path / "nope.toml"), "config file not found")


def test_missing_model_file(tmp_path):
    path = write_config(tmp_path, model=model_section(source="missing.pt2"))
    assert_one_line_error(*invoke("run", path), "model file not found")


def test_missing_model_python_file(tmp_path):
    path = write_config(tmp_path, model=model_section(source="nets/missing.py:build"))
    assert_one_line_error(*invoke("run", path), "model file not found")


@pytest.mark.parametrize("source", ["edgeport.examples.digits:", "not a module:build", "model.onnx"])
def test_malformed_factory_string(tmp_path, source):
    path = write_config(tmp_path, model=model_section(source=source))
    assert_one_line_error(*invoke("run", path), "is malformed")


def test_malformed_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("name = \n")
    assert_one_line_error(*invoke("run", path), "malformed TOML")


def test_unknown_config_key(tmp_path):
    path = write_config(tmp_path, bench="[bench]\nitterations = 5\n")
    assert_one_line_error(*invoke("run", path), 'unknown key \'bench.itterations\' (did you mean "iterations"?)')


def test_unknown_target(tmp_path):
    path = write_config(tmp_path, targets="[targets.tensorrt]\n")
    assert_one_line_error(*invoke("run", path), "unknown target 'tensorrt'")


def test_unknown_target_on_export(tmp_path, config_file):
    assert_one_line_error(*invoke("export", config_file, "--target", "onnxruntme"), 'did you mean "onnxruntime"')


def test_input_shape_that_does_not_match_the_model(tmp_path):
    path = write_config(tmp_path, model=model_section(shape='["batch", 3, 8, 8]'))
    assert_one_line_error(*invoke("run", path), "does not accept the configured inputs (image ['batch', 3, 8, 8])")


def test_calibration_data_with_nan(tmp_path):
    data = np.random.default_rng(0).random((300, 1, 8, 8), dtype=np.float32)
    data[17, 0, 3, 3] = np.nan
    np.save(tmp_path / "calib.npy", data)
    path = write_config(tmp_path, data='[data]\nsource = "npy"\npath = "calib.npy"\ncalibration_samples = 64\n')
    assert_one_line_error(*invoke("run", path), "holds 1 NaN or Inf value(s)")


def test_too_few_samples_names_how_many(tmp_path):
    np.save(tmp_path / "calib.npy", np.zeros((50, 1, 8, 8), np.float32))
    path = write_config(tmp_path, data='[data]\nsource = "npy"\npath = "calib.npy"\ncalibration_samples = 64\n')
    assert_one_line_error(*invoke("run", path), "50 samples found")


def test_data_of_the_wrong_shape(tmp_path):
    np.save(tmp_path / "calib.npy", np.zeros((300, 8, 8), np.float32))
    path = write_config(tmp_path, data='[data]\nsource = "npy"\npath = "calib.npy"\ncalibration_samples = 64\n')
    assert_one_line_error(*invoke("run", path), "samples have shape [8, 8], the model takes [1, 8, 8]")


@pytest.mark.onnxruntime
def test_tampered_artifact_is_refused(tmp_path, config_file):
    code, output = invoke("export", config_file, "--precision", "fp32")
    assert code == 0, output
    artifact = tmp_path / "runs" / "t" / "artifacts" / "onnxruntime-fp32"
    model = artifact / "model.onnx"
    blob = bytearray(model.read_bytes())
    blob[-10] ^= 0xFF
    model.write_bytes(bytes(blob))
    assert_one_line_error(*invoke("verify", artifact, "--config", config_file), "sha256 mismatch")
    assert_one_line_error(*invoke("bench", artifact), "sha256 mismatch")
    assert_one_line_error(*invoke("run", config_file), "sha256 mismatch")


def test_not_an_artifact_folder(tmp_path):
    assert_one_line_error(*invoke("bench", tmp_path), "no artifact.json here")
