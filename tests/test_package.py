"""Bundles: verified, runnable, reproducible, tamper-evident and safe to unpack."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeport import load_config, run
from tests.conftest import invoke, write_config

pytestmark = [pytest.mark.onnxruntime, pytest.mark.openvino, pytest.mark.tflite, pytest.mark.slow]

MODEL = """
[model]
source = "edgeport.examples.digits:trained_cnn"
inputs = [{ name = "image", shape = ["batch", 1, 8, 8], dtype = "float32", layout = "NCHW" }]
output_names = ["logits"]
labels = "labels.txt"
preprocessing = { scale = 0.00392156862745098, channel_order = "gray", layout = "NCHW" }
"""
TARGETS = """
[targets.onnxruntime]
precisions = ["int8"]
[targets.openvino]
precisions = ["int8"]
[targets.tflite]
precisions = ["full-int8"]
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory, model_cache):
    folder = tmp_path_factory.mktemp("pkg")
    (folder / "labels.txt").write_text("".join(f"digit {i}\n" for i in range(10)))
    result = run(load_config(write_config(folder, model=MODEL, targets=TARGETS)))
    return result


def digit_png(folder: Path, index: int) -> tuple[Path, int]:
    """A held-out digit written as an 8-bit grayscale PNG, as an app would receive it."""
    from PIL import Image

    from edgeport.calibration.digits import digits_split

    _, _, x, y = digits_split()
    path = folder / f"digit{index}.png"
    Image.fromarray(np.round(x[index, 0] * 255).astype(np.uint8)).save(path)
    return path, int(y[index])


def test_one_verified_bundle_per_target(finished):
    names = sorted(p.name for p in finished.bundles)
    assert names == ["t-onnxruntime-int8", "t-openvino-int8", "t-tflite-full-int8"]
    for bundle in finished.bundles:
        code, output = invoke("package", "verify", bundle)
        assert code == 0, output
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["labels"] == "labels.txt" and manifest["verification"]["passed"]
        assert manifest["benchmarks"][0]["device"] == "local"
        assert {f["path"] for f in manifest["files"]} >= {manifest["model_file"], "example.py", "README.md", "labels.txt"}


def test_tflite_bundle_has_the_app_files(finished):
    bundle = next(b for b in finished.bundles if "tflite" in b.name)
    for name in ("model_data.h", "model_data.cc", "example.cc", "assets/model.tflite", "assets/labels.txt"):
        assert (bundle / name).is_file(), name
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["inputs"][0]["dtype"] == "int8" and manifest["inputs"][0]["layout"] == "NHWC"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_python_example_prints_the_right_class(finished, tmp_path, index):
    image, label = digit_png(tmp_path, index)
    for bundle in finished.bundles:
        out = subprocess.run([sys.executable, str(bundle / "example.py"), str(image)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"digit {label}", (bundle.name, out.stdout)


def test_packaging_twice_is_byte_identical(finished, tmp_path):
    digests = []
    for attempt in range(2):
        for ext in ("tar.gz", "zip"):
            archive = tmp_path / f"b{attempt}.{ext}"
            code, output = invoke("package", finished.run_dir, "--target", "tflite", "--out", archive)
            assert code == 0, output
            digests.append(hashlib.sha256(archive.read_bytes()).hexdigest())
    assert digests[0] == digests[2] and digests[1] == digests[3]
    code, output = invoke("package", "verify", tmp_path / "b0.zip")
    assert code == 0, output


def copy_bundle(finished, tmp_path, target="onnxruntime") -> Path:
    source = next(b for b in finished.bundles if target in b.name)
    return Path(shutil.copytree(source, tmp_path / source.name))


def assert_refused(bundle, message):
    code, output = invoke("package", "verify", bundle)
    assert code == 2, output
    assert message in output, output


def test_a_flipped_byte_is_caught(finished, tmp_path):
    bundle = copy_bundle(finished, tmp_path)
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    assert_refused(bundle, "model.onnx does not match its sha256")


def test_a_deleted_file_is_caught(finished, tmp_path):
    bundle = copy_bundle(finished, tmp_path)
    (bundle / "labels.txt").unlink()
    assert_refused(bundle, "labels.txt is listed in the manifest but missing")


def test_an_edited_manifest_is_caught(finished, tmp_path):
    bundle = copy_bundle(finished, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["precision"] = "int4"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert_refused(bundle, "does not match its schema at precision")
    manifest["precision"] = "int8"
    manifest["outputs"][0]["shape"] = ["batch", 12]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert_refused(bundle, "manifest.json does not match the model file: output 'logits': shape ['batch', 12], "
                           "the model file's is [None, 10]")


def crafted_tar(path: Path, name: str, link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        if link is not None:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return path


@pytest.mark.parametrize("name, link, message", [
    ("/tmp/evil.txt", None, "absolute path"),
    ("bundle/../../evil.txt", None, "climbs out of the bundle"),
    ("bundle/passwd", "/etc/passwd", "points outside the bundle"),
    ("bundle/up", "../../outside", "points outside the bundle"),
])
def test_unsafe_tar_entries_are_refused(tmp_path, name, link, message):
    assert_refused(crafted_tar(tmp_path / "bad.tar.gz", name, link), message)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_unsafe_zip_entries_are_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as z:
        z.writestr("../evil.txt", "evil")
    assert_refused(tmp_path / "bad.zip", "climbs out of the bundle")


def test_the_c_array_compiles_and_holds_the_model(finished, tmp_path):
    bundle = next(b for b in finished.bundles if "tflite" in b.name)
    (tmp_path / "check.c").write_text(
        '#include <stdio.h>\n#include "model_data.h"\n'
        'int main(void) { printf("%u %c%c%c%c\\n", g_model_len, g_model[4], g_model[5], g_model[6], g_model[7]);'
        ' return 0; }\n')
    binary = tmp_path / "check"
    subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", "-I", str(bundle), "-x", "c", str(bundle / "model_data.cc"),
                    str(tmp_path / "check.c"), "-o", str(binary)], check=True, capture_output=True)
    length, ident = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.split()
    model = (bundle / "model.tflite").read_bytes()
    assert int(length) == len(model) and ident == "TFL3" == model[4:8].decode()


def test_package_errors_are_one_line(finished, tmp_path):
    code, output = invoke("package", finished.run_dir, "--target", "tflit")
    assert code == 2 and 'did you mean "tflite"' in output
    code, output = invoke("package", tmp_path)
    assert code == 2 and "no report.json" in output
