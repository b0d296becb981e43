"""Every user mistake ends with one line that says what and where, exit code 2 and no traceback
(issue 14): a table of bad inputs across config, model, data, artifacts, devices, bundles and the
command line, each run through the real CLI. Cases share one finished run (tests/conftest.py)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgeport.cli import app
from tests.conftest import copy_run, fast_config
from tests.sshd import free_port

pytestmark = pytest.mark.onnxruntime

cli = CliRunner()
CASES = []


def case(message: str, *marks):
    """Register `setup(folder, finished) -> argv` as a bad input whose error line holds `message`."""

    def register(setup):
        CASES.append(pytest.param(setup, message, id=setup.__name__.removeprefix("_"), marks=marks))
        return setup

    return register


def dry_run(body: str = "", **sections):
    return lambda folder, finished: ["run", fast_config(folder, body, **sections), "--dry-run"]


def model(source: str, shape: str = '["batch", 1, 8, 8]', dtype: str = "float32", extra: str = "") -> str:
    return (f'[model]\nsource = "{source}"\ninputs = [{{ name = "image", shape = {shape}, dtype = "{dtype}" }}]\n'
            f"{extra}\n")


def export(folder: Path, finished, body: str = "", **sections) -> list:
    """`export -p fp32` of a copy of the finished run (the ONNX interchange is cached)."""
    return ["export", copy_run(finished, folder, body, **sections), "-p", "fp32"]


def npz_data(folder: Path, extra: str = "", **arrays) -> str:
    np.savez(folder / "data.npz", **arrays)
    return f'[data]\nsource = "npy"\npath = "data.npz"\ncalibration_samples = 32\n{extra}'


def digits(n: int = 100):
    from edgeport.calibration.digits import digits_split

    _, _, x, y = digits_split()
    return x[:n], y[:n]


def traced(folder: Path) -> Path:
    from edgeport.examples.digits import trained_cnn

    path = folder / "model.pt"
    torch.jit.save(torch.jit.trace(trained_cnn().eval(), torch.zeros(1, 1, 8, 8)), str(path))
    return path


def truncated(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def artifact_copy(folder: Path, finished) -> Path:
    return Path(shutil.copytree(finished.artifacts[0].artifact.root, folder / "artifact"))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def bundle_copy(folder: Path, finished) -> Path:
    return Path(shutil.copytree(finished.bundles[0], folder / finished.bundles[0].name, symlinks=True))


def archive(folder: Path, finished, suffix: str, extra: dict[str, bytes] | None = None) -> Path:
    from edgeport.pipeline.bundle_io import write_archive

    bundle = bundle_copy(folder, finished)
    for name, data in (extra or {}).items():
        (bundle / name).write_bytes(data)
    return write_archive(bundle, folder / f"bundle{suffix}")


def profile(folder: Path, text: str, name: str = "dev") -> list:
    devices = folder / "devices"
    devices.mkdir(exist_ok=True)
    (devices / f"{name}.toml").write_text(text)
    return ["devices", "check", name, "--devices-dir", devices]


# --- config (run --dry-run: nothing is loaded or built)

@case("config file not found")
def _config_missing(folder, finished):
    return ["run", folder / "nope.toml", "--dry-run"]


@case("malformed TOML")
def _config_malformed_toml(folder, finished):
    (folder / "c.toml").write_text('name = "x"\n[model\n')
    return ["run", folder / "c.toml", "--dry-run"]


@case("not a text file")
def _config_binary(folder, finished):
    (folder / "c.toml").write_bytes(bytes(range(256)))
    return ["run", folder / "c.toml", "--dry-run"]


for _id, _message, _kw in [
    ("config_unknown_key", "unknown key 'nmae' (did you mean \"name\"?)",
     {"model": 'nmae = "x"\n' + model("edgeport.examples.digits:trained_cnn")}),
    ("config_unknown_section_key", "unknown key 'bench.itterations' (did you mean \"iterations\"?)",
     {"bench": "[bench]\nitterations = 5\n"}),
    ("config_missing_model", "missing required key 'model'", {"model": ""}),
    ("model_no_inputs", "give at least one input",
     {"model": '[model]\nsource = "edgeport.examples.digits:trained_cnn"\ninputs = []\n'}),
    ("model_dtype_typo", 'dtype \'flaot32\' is not one of', {"model": model("edgeport.examples.digits:trained_cnn", dtype="flaot32")}),
    ("model_zero_dimension", "needs at least one dimension", {"model": model("edgeport.examples.digits:trained_cnn", shape="[1, 0, 8, 8]")}),
    ("model_two_dynamic_dims", "only the first (batch) dimension may be dynamic",
     {"model": model("edgeport.examples.digits:trained_cnn", shape='["batch", "c", 8, 8]')}),
    ("model_same_input_twice", "input names must differ",
     {"model": '[model]\nsource = "edgeport.examples.digits:trained_cnn"\ninputs = [{ name = "x", shape = [1, 4] }, '
               '{ name = "x", shape = [1, 4] }]\n'}),
    ("model_bad_preprocessing", "channel_order: Input should be 'RGB', 'BGR' or 'gray'",
     {"model": model("edgeport.examples.digits:trained_cnn", extra='preprocessing = { channel_order = "RGBA" }')}),
    ("target_unknown", "unknown target 'tensorrt'", {"targets": "[targets.tensorrt]\n"}),
    ("target_unknown_option", "unknown key 'precison' (did you mean \"precisions\"?)",
     {"targets": '[targets.onnxruntime]\nprecison = ["fp32"]\n'}),
    ("target_precision_not_offered", "precisions.0: Input should be 'fp32' or 'int8'",
     {"targets": '[targets.onnxruntime]\nprecisions = ["fp16"]\n'}),
    ("tolerance_unknown_precision", "unknown precision 'in8' (did you mean \"int8\"?)",
     {"body": "[verify.tolerances.in8]\nmin_cosine = 0.5\n"}),
    ("tolerance_out_of_range", "min_cosine: Input should be less than or equal to 1",
     {"body": "[verify.tolerances.int8]\nmin_cosine = 7.0\n"}),
    ("bench_iterations_zero", "bench.iterations: Input should be greater than 0", {"bench": "[bench]\niterations = 0\n"}),
    ("bench_min_seconds_negative", "bench.min_seconds: Input should be greater than or equal to 0",
     {"bench": "[bench]\nmin_seconds = -5\n"}),
    ("bench_threads_negative", "bench.threads: Input should be greater than or equal to 0", {"bench": "[bench]\nthreads = -1\n"}),
    ("data_no_calibration_samples", "data.calibration_samples: Input should be greater than 0",
     {"data": '[data]\nsource = "digits"\ncalibration_samples = 0\n'}),
    ("data_unknown_source", "data.source: Input should be 'digits'", {"data": '[data]\nsource = "csv"\n'}),
    ("data_npy_without_path", "data.source = 'npy' needs data.path", {"data": '[data]\nsource = "npy"\n'}),
    ("data_path_missing", "data.path not found", {"data": '[data]\nsource = "npy"\npath = "nope.npz"\n'}),
    ("data_eval_path_missing", "data.eval_path not found",
     {"data": '[data]\nsource = "images"\npath = "."\neval_path = "nope"\n'}),
    ("data_images_path_is_a_file", "(data.source = 'images' reads a folder of images)",
     {"data": '[data]\nsource = "images"\npath = "config.toml"\n'}),
    ("data_callable_without_function", "data.source = 'callable' needs data.function", {"data": '[data]\nsource = "callable"\n'}),
    ("data_function_file_missing", "data.function file not found",
     {"data": '[data]\nsource = "callable"\nfunction = "gen.py:samples"\n'}),
    ("model_labels_missing", "model.labels file not found",
     {"model": model("edgeport.examples.digits:trained_cnn", extra='labels = "labels.txt"')}),
    ("model_weights_missing", "model.weights file not found",
     {"model": model("edgeport.examples.digits:trained_cnn", extra='weights = "w.pt"')}),
    ("devices_dir_missing", "devices folder not found", {"body": '[devices]\ndir = "nope"\n'}),
    ("bench_device_unknown", "unknown device 'pi9'", {"body": '[[bench.devices]]\nname = "pi9"\n'}),
    ("search_without_budget", "a budget is needed", {"body": "[search]\nobjective = \"size\"\n"}),
    ("compress_unknown_method", "does not match any of the expected tags", {"body": '[[compress]]\nmethod = "prune"\n'}),
    ("compress_data_missing", "training data not found",
     {"body": '[[compress]]\nmethod = "distill"\ndata = "npy"\npath = "train.npz"\n'}),
    ("compress_fine_tune_data_missing", "compress[0] (cluster): training data not found",
     {"body": '[[compress]]\nmethod = "cluster"\nfine_tune = { data = "npy", path = "train.npz" }\n'}),
]:
    CASES.append(pytest.param(dry_run(**_kw), _message, id=_id if _id.startswith("config") else f"config_{_id}"))


@case("cannot create the run folder")
def _config_runs_dir_under_a_file(folder, finished):
    return ["run", fast_config(folder), "--dry-run", "--runs-dir", folder / "config.toml" / "runs"]


@case("name: String should match pattern")
def _config_run_name_with_a_slash(folder, finished):
    return ["run", fast_config(folder), "--dry-run", "--name", "a/b"]


# --- model (export: the model is loaded, nothing is built)


@case("model file not found")
def _model_file_missing(folder, finished):
    return ["export", fast_config(folder, model=model("missing.pt2")), "-p", "fp32"]


@case("model file not found")
def _model_python_file_missing(folder, finished):
    return ["export", fast_config(folder, model=model("nets/missing.py:build")), "-p", "fp32"]


@case("is malformed; expected")
def _model_source_malformed(folder, finished):
    return ["export", fast_config(folder, model=model("model.onnx")), "-p", "fp32"]


@case("cannot import 'no_such_pkg.nets'")
def _model_module_missing(folder, finished):
    return ["export", fast_config(folder, model=model("no_such_pkg.nets:build")), "-p", "fp32"]


@case("has no attribute 'nothere'")
def _model_factory_missing(folder, finished):
    return ["export", fast_config(folder, model=model("edgeport.examples.digits:nothere")), "-p", "fp32"]


@case("the factory raised RuntimeError: no GPU here")
def _model_factory_raises(folder, finished):
    (folder / "nets.py").write_text("def build():\n    raise RuntimeError('no GPU here')\n")
    return ["export", fast_config(folder, model=model("nets.py:build")), "-p", "fp32"]


@case("returned dict, not a torch.nn.Module")
def _model_factory_returns_a_dict(folder, finished):
    (folder / "nets.py").write_text("def build():\n    return {}\n")
    return ["export", fast_config(folder, model=model("nets.py:build")), "-p", "fp32"]


@case("importing nets.py raised SyntaxError")
def _model_module_syntax_error(folder, finished):
    (folder / "nets.py").write_text("def build(:\n")
    return ["export", fast_config(folder, model=model("nets.py:build")), "-p", "fp32"]


@case("is truncated or damaged")
def _model_torchscript_truncated(folder, finished):
    truncated(traced(folder))
    return ["export", fast_config(folder, model=model("model.pt")), "-p", "fp32"]


@case("is truncated or damaged")
def _model_pt2_truncated(folder, finished):
    truncated(traced(folder)).rename(folder / "model.pt2")
    return ["export", fast_config(folder, model=model("model.pt2")), "-p", "fp32"]


@case("is not a TorchScript, torch.export or torch.save file")
def _model_file_is_text(folder, finished):
    (folder / "model.pt").write_text("not a model\n")
    return ["export", fast_config(folder, model=model("model.pt")), "-p", "fp32"]


@case("loads only with --trust-model")
def _model_pickle_without_trust(folder, finished):
    from edgeport.examples.digits import trained_cnn

    torch.save(trained_cnn(), folder / "model.pt")
    return ["export", fast_config(folder, model=model("model.pt")), "-p", "fp32"]


@case("holds a dict, not a torch.nn.Module")
def _model_pickle_of_a_dict(folder, finished):
    torch.save({"weights": torch.zeros(3)}, folder / "model.pt")
    return ["export", fast_config(folder, model=model("model.pt", extra="trust_model = true")), "-p", "fp32"]


@case("does not accept the configured inputs (image ['batch', 3, 8, 8])")
def _model_input_shape_wrong(folder, finished):
    return ["export", fast_config(folder, model=model("edgeport.examples.digits:trained_cnn", shape='["batch", 3, 8, 8]')),
            "-p", "fp32"]


@case("model.output_names has 2 names; the model returns 1 outputs")
def _model_output_names_wrong(folder, finished):
    source = model("edgeport.examples.digits:trained_cnn", extra='output_names = ["a", "b"]')
    return ["export", fast_config(folder, model=source), "-p", "fp32"]


@case("cannot load into the model")
def _model_weights_do_not_fit(folder, finished):
    torch.save({"fc.weight": torch.zeros(2, 2)}, folder / "w.pt")
    source = model("edgeport.examples.digits:trained_cnn", extra='weights = "w.pt"')
    return ["export", fast_config(folder, model=source), "-p", "fp32"]


@case("cannot load into the model")
def _model_weights_truncated(folder, finished):
    from edgeport.examples.digits import trained_cnn

    torch.save(trained_cnn().state_dict(), folder / "w.pt")
    truncated(folder / "w.pt")
    source = model("edgeport.examples.digits:trained_cnn", extra='weights = "w.pt"')
    return ["export", fast_config(folder, model=source), "-p", "fp32"]


# --- data (export of a copy of the finished run: the ONNX file is cached, the data stage fails)


@case("holds 1 NaN or Inf value(s)")
def _data_with_nan(folder, finished):
    x, y = digits()
    x = x.copy()
    x[3, 0, 2, 2] = np.nan
    return export(folder, finished, data=npz_data(folder, image=x, labels=y))


@case("100 samples found; asked for 128 calibration")
def _data_too_few_samples(folder, finished):
    x, y = digits()
    return export(folder, finished, data=npz_data(folder, image=x, labels=y).replace("= 32", "= 128"))


@case("samples have shape [8, 8], the model takes [1, 8, 8]")
def _data_wrong_shape(folder, finished):
    x, y = digits()
    return export(folder, finished, data=npz_data(folder, image=x[:, 0], labels=y))


@case("90 labels for 100 samples")
def _data_labels_shorter_than_samples(folder, finished):
    x, y = digits()
    return export(folder, finished, data=npz_data(folder, image=x, labels=y[:90]))


@case("the labels are strings ('digit 0', 'digit 1', …)")
def _data_string_labels(folder, finished):
    x, _ = digits()
    return export(folder, finished, data=npz_data(folder, image=x, labels=np.array([f"digit {i % 10}" for i in range(100)])))


@case("are float64 values that are not whole numbers")
def _data_fractional_labels(folder, finished):
    x, y = digits()
    return export(folder, finished, data=npz_data(folder, image=x, labels=y + 0.5))


@case("the labels hold -1; class indices start at 0")
def _data_negative_labels(folder, finished):
    x, y = digits()
    return export(folder, finished, data=npz_data(folder, image=x, labels=y - 1))


@case("no array for model input 'image' (found pixels)")
def _data_input_name_wrong(folder, finished):
    x, y = digits()
    return export(folder, finished, data=npz_data(folder, pixels=x, labels=y))


@case("input 'image' is stored as <U1")
def _data_input_is_text(folder, finished):
    return export(folder, finished, data=npz_data(folder, image=np.full((100, 1, 8, 8), "a")))


@case("not a readable .npy/.npz file")
def _data_file_is_not_numpy(folder, finished):
    data = npz_data(folder, image=np.zeros(3))
    (folder / "data.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return export(folder, finished, data=data)


@case("sample(s) are in both the calibration and the evaluation set")
def _data_eval_overlaps_calibration(folder, finished):
    x, y = digits()
    return export(folder, finished, data=npz_data(folder, 'eval_path = "data.npz"\n', image=x, labels=y))


@case("data.function 'gen.py:samples' raised ValueError: the camera is unplugged")
def _data_function_raises(folder, finished):
    (folder / "gen.py").write_text("def samples():\n    raise ValueError('the camera is unplugged')\n    yield\n")
    return export(folder, finished, data='[data]\nsource = "callable"\nfunction = "gen.py:samples"\n')


@case("must yield dicts of input name -> array")
def _data_function_yields_arrays(folder, finished):
    (folder / "gen.py").write_text("import numpy as np\ndef samples():\n    while True:\n        yield np.zeros((1, 8, 8))\n")
    return export(folder, finished, data='[data]\nsource = "callable"\nfunction = "gen.py:samples"\n')


@case("no images (.jpg, .png, .bmp, .webp) found")
def _data_image_folder_empty(folder, finished):
    (folder / "images").mkdir()
    return export(folder, finished, data='[data]\nsource = "images"\npath = "images"\n')


# --- artifacts (bench and verify check the record and every hash first)


@case("no artifact.json here")
def _artifact_folder_empty(folder, finished):
    return ["bench", folder]


@case("is truncated or not an artifact record")
def _artifact_record_truncated(folder, finished):
    artifact = artifact_copy(folder, finished)
    truncated(artifact / "artifact.json")
    return ["bench", artifact]


@case("names a file outside its folder ('../config.toml')")
def _artifact_names_a_file_above(folder, finished):
    artifact = artifact_copy(folder, finished)
    edit_json(artifact / "artifact.json", lambda a: a["files"][0].update(path="../config.toml"))
    return ["bench", artifact]


@case("names a file outside its folder ('/etc/passwd')")
def _artifact_names_an_absolute_file(folder, finished):
    artifact = artifact_copy(folder, finished)
    edit_json(artifact / "artifact.json", lambda a: a["files"][0].update(path="/etc/passwd"))
    return ["bench", artifact]


@case("precision: Input should be")
def _artifact_precision_unknown(folder, finished):
    artifact = artifact_copy(folder, finished)
    edit_json(artifact / "artifact.json", lambda a: a.update(precision="int4"))
    return ["bench", artifact]


@case("file listed in artifact.json is missing")
def _artifact_file_missing(folder, finished):
    artifact = artifact_copy(folder, finished)
    (artifact / "model.onnx").unlink()
    return ["bench", artifact]


@case("sha256 mismatch")
def _artifact_file_changed(folder, finished):
    artifact = artifact_copy(folder, finished)
    with open(artifact / "model.onnx", "ab") as f:
        f.write(b"\0")
    return ["verify", artifact, "--config", fast_config(folder)]


@case("Missing option '--config'")
def _artifact_verify_without_config(folder, finished):
    return ["verify", finished.artifacts[0].artifact.root]


# --- devices


@case("host: '-oProxyCommand=touch x' must not start with '-'")
def _device_host_is_an_option(folder, finished):
    return profile(folder, 'transport = "ssh"\nhost = "-oProxyCommand=touch x"\n')


@case("user: 'pi admin' holds whitespace or control characters")
def _device_user_with_a_space(folder, finished):
    return profile(folder, 'transport = "ssh"\nhost = "pi"\nuser = "pi admin"\n')


@case("serial: '-H' must not start with '-'")
def _device_adb_serial_is_an_option(folder, finished):
    return profile(folder, 'transport = "adb"\nserial = "-H"\n')


@case("transport 'telnet' is not one of local, ssh, adb")
def _device_transport_unknown(folder, finished):
    return profile(folder, 'transport = "telnet"\n')


@case("unknown key 'hots' (did you mean \"host\"?)")
def _device_key_typo(folder, finished):
    return profile(folder, 'transport = "ssh"\nhots = "pi"\n')


@case("port: Input should be greater than 0")
def _device_port_zero(folder, finished):
    return profile(folder, 'transport = "ssh"\nhost = "pi"\nport = 0\n')


@case("an ssh profile needs host or ssh_alias")
def _device_ssh_without_host(folder, finished):
    return profile(folder, 'transport = "ssh"\nuser = "pi"\n')


@case("malformed TOML")
def _device_profile_malformed(folder, finished):
    return profile(folder, 'transport = "ssh\n')


@case("cannot connect to 127.0.0.1")
def _device_unreachable(folder, finished):
    if not shutil.which("ssh"):
        pytest.skip("needs the OpenSSH client")
    return profile(folder, f'transport = "ssh"\nhost = "127.0.0.1"\nport = {free_port()}\nconnect_timeout = 3\n'
                           '[options]\nStrictHostKeyChecking = "no"\nUserKnownHostsFile = "/dev/null"\n')


@case("unknown device 'pi9'")
def _device_unknown(folder, finished):
    return ["devices", "check", "pi9"]


@case("unknown device 'pi9'")
def _device_bench_on_an_unknown_one(folder, finished):
    return ["bench", finished.artifacts[0].artifact.root, "--device", "pi9"]


# --- bundles


@case("bundle not found")
def _bundle_missing(folder, finished):
    return ["package", "verify", folder / "nope.zip"]


@case("not a bundle archive (.tar.gz or .zip)")
def _bundle_is_a_text_file(folder, finished):
    (folder / "bundle.txt").write_text("hello\n")
    return ["package", "verify", folder / "bundle.txt"]


@case("not a readable zip archive, truncated or corrupt")
def _bundle_zip_truncated(folder, finished):
    return ["package", "verify", truncated(archive(folder, finished, ".zip"))]


@case("not a readable tar.gz archive, truncated or corrupt")
def _bundle_tar_truncated(folder, finished):
    return ["package", "verify", truncated(archive(folder, finished, ".tar.gz"))]


@case("not a readable zip archive, truncated or corrupt")
def _bundle_zip_of_random_bytes(folder, finished):
    (folder / "b.zip").write_bytes(np.random.default_rng(0).bytes(4096))
    return ["package", "verify", folder / "b.zip"]


@case("climbs out of the bundle")
def _bundle_zip_climbs_out(folder, finished):
    with zipfile.ZipFile(folder / "b.zip", "w") as z:
        z.writestr("../evil.txt", "evil")
    return ["package", "verify", folder / "b.zip"]


@case("refusing archive entry with an absolute path")
def _bundle_tar_absolute(folder, finished):
    with tarfile.open(folder / "b.tar.gz", "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("/tmp/evil.txt"), io.BytesIO())
    return ["package", "verify", folder / "b.tar.gz"]


@case("refusing link that points outside the bundle")
def _bundle_tar_link_out(folder, finished):
    with tarfile.open(folder / "b.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("bundle/passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    return ["package", "verify", folder / "b.tar.gz"]


@case("extra.txt is not listed in manifest.json")
def _bundle_zip_unlisted_entry(folder, finished):
    return ["package", "verify", archive(folder, finished, ".zip", {"extra.txt": b"surprise\n"})]


@case("extra.txt is not listed in manifest.json")
def _bundle_tar_unlisted_entry(folder, finished):
    return ["package", "verify", archive(folder, finished, ".tar.gz", {"extra.txt": b"surprise\n"})]


@case("no manifest.json")
def _bundle_without_manifest(folder, finished):
    with zipfile.ZipFile(folder / "b.zip", "w") as z:
        z.writestr("bundle/model.onnx", "x")
    return ["package", "verify", folder / "b.zip"]


@case("manifest.json is not valid JSON")
def _bundle_manifest_truncated(folder, finished):
    bundle = bundle_copy(folder, finished)
    truncated(bundle / "manifest.json")
    return ["package", "verify", bundle]


@case("manifest.json does not match its schema at precision")
def _bundle_manifest_precision_unknown(folder, finished):
    bundle = bundle_copy(folder, finished)
    edit_json(bundle / "manifest.json", lambda m: m.update(precision="int4"))
    return ["package", "verify", bundle]


@case("model.onnx does not match its sha256 in the manifest")
def _bundle_file_changed(folder, finished):
    bundle = bundle_copy(folder, finished)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (bundle / "model.onnx").write_bytes(bytes(data))
    return ["package", "verify", bundle]


@case("README.md is listed in the manifest but missing")
def _bundle_file_deleted(folder, finished):
    bundle = bundle_copy(folder, finished)
    (bundle / "README.md").unlink()
    return ["package", "verify", bundle]


@case("notes.txt is not listed in manifest.json; --strict refuses")
def _bundle_folder_unlisted_strict(folder, finished):
    bundle = bundle_copy(folder, finished)
    (bundle / "notes.txt").write_text("x\n")
    return ["package", "verify", bundle, "--strict"]


@case("shadow is a symbolic link to /etc/shadow")
def _bundle_folder_symlink_strict(folder, finished):
    bundle = bundle_copy(folder, finished)
    (bundle / "shadow").symlink_to("/etc/shadow")
    return ["package", "verify", bundle, "--strict"]


@case("Missing argument 'BUNDLE'")
def _bundle_verify_without_bundle(folder, finished):
    return ["package", "verify"]


@case("no report.json; is this a finished run folder?")
def _bundle_package_not_a_run(folder, finished):
    return ["package", folder]


@case("report.json is truncated or not JSON")
def _bundle_package_report_truncated(folder, finished):
    copy_run(finished, folder)
    truncated(folder / "runs" / "t" / "report.json")
    return ["package", folder / "runs" / "t"]


@case('the run has no \'onnxruntme\' artifact (did you mean "onnxruntime"?)')
def _bundle_package_target_typo(folder, finished):
    return ["package", finished.run_dir, "--target", "onnxruntme", "--out", folder / "b.zip"]


@case("cannot create the bundle folder")
def _bundle_package_out_under_a_file(folder, finished):
    (folder / "a-file").write_text("x")
    return ["package", finished.run_dir, "--out", folder / "a-file" / "bundles"]


# --- the command line: every bound the config has, on the options too


@case("give a file in an existing folder")
def _cli_bench_out_in_a_missing_folder(folder, finished):
    return ["bench", finished.artifacts[0].artifact.root, "--out", folder / "nope" / "bench.json"]



for _id, _args, _message in [
    ("bench_threads_negative", ["--threads", "-1"], "Invalid value for '--threads'"),
    ("bench_iterations_zero", ["--iterations", "0"], "Invalid value for '--iterations'"),
    ("bench_min_seconds_negative", ["--min-seconds", "-5"], "Invalid value for '--min-seconds'"),
    ("bench_warmup_negative", ["--warmup", "-1"], "Invalid value for '--warmup'"),
    ("bench_hint_unknown", ["--hint", "f16"], "Invalid value for '--hint'"),
]:
    CASES.append(pytest.param(lambda f, r, a=_args: ["bench", r.artifacts[0].artifact.root, *a], _message, id=f"cli_{_id}"))


@case("Invalid value for '--threads'")
def _cli_run_threads_negative(folder, finished):
    return ["run", fast_config(folder), "--threads", "-1"]


@case("Invalid value for '--workers'")
def _cli_tune_workers_negative(folder, finished):
    return ["tune", fast_config(folder), "--workers", "-1"]


@case("unknown precision 'fp64' (did you mean \"fp16\"?)")
def _cli_export_precision_unknown(folder, finished):
    return ["export", copy_run(finished, folder), "-p", "fp64"]


@case("no chosen target builds int8")
def _cli_export_precision_not_configured(folder, finished):
    return ["export", copy_run(finished, folder), "-p", "int8"]


@case('unknown target \'onnxruntme\' (did you mean "onnxruntime"?)')
def _cli_export_target_typo(folder, finished):
    return ["export", fast_config(folder), "-t", "onnxruntme"]


@case("No such command 'verfy'")
def _cli_unknown_command(folder, finished):
    return ["verfy"]


@case("No such option: --tread")
def _cli_unknown_option(folder, finished):
    return ["run", fast_config(folder), "--tread", "2"]


@case("Invalid value for '--size'")
def _cli_crops_size_zero(folder, finished):
    return ["crops", folder / "crops", "--size", "0"]


@case("Missing argument 'RUN'")
def _cli_calibrate_report_without_run(folder, finished):
    return ["calibrate", "report"]


@case("no [[compress]] steps to run")
def _cli_compress_without_steps(folder, finished):
    return ["compress", "--config", fast_config(folder)]


@case("the config has no [search] section")
def _cli_tune_without_search(folder, finished):
    return ["tune", fast_config(folder)]


def test_the_table_is_large():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("setup, message", CASES)
def test_bad_input_is_one_line(tmp_path, monkeypatch, finished_run, setup, message):
    monkeypatch.chdir(tmp_path)
    args = [str(a) for a in setup(tmp_path, finished_run)]
    result = cli.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert message in errors[0], errors[0]
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("args, message", [
    (["run", "nope.toml"], "config file not found"),
    (["bench", ".", "--threads", "-1"], "Invalid value for '--threads'"),
    (["export", "nope.toml", "-p", "fp32"], "config file not found"),
    (["package", "verify", "nope.zip"], "bundle not found"),
    (["devices", "check", "pi9"], "unknown device 'pi9'"),
    (["calibrate", "report", "."], "no report.json"),
    (["crops", "out", "--size", "0"], "Invalid value for '--size'"),
    (["verfy"], "No such command"),
])
def test_json_errors_are_one_object_on_stdout(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = cli.invoke(app, [*args, "--json"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)
    assert error["code"] == 2 and message in error["error"]


def test_every_command_takes_json_and_verbose():
    from typer.main import get_command

    group = get_command(app)
    groups = ("devices", "package", "calibrate")
    commands = [(name, command) for name, command in group.commands.items() if name not in groups]
    commands += [(f"{g} {name}", command) for g in groups for name, command in group.commands[g].commands.items()]
    for name, command in commands:
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert {"--json", "--verbose", "-v"} <= options, name
