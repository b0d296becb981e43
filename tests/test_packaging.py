"""A regular build of the project prints no setuptools warning and ships every sub-package and data file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tests.conftest import REPO

SHIPPED = ("pyproject.toml", "README.md", "edgeport", "pipeline", "targets", "calibration", "devices", "examples")


def test_wheel_builds_without_setuptools_warnings_and_ships_package_data(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in SHIPPED:  # a copy: building in place would leave build/ and egg-info in the checkout
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    warned = [line for line in output.splitlines() if "BuildBackendWarning" in line or "SetuptoolsWarning" in line
              or "SetuptoolsDeprecationWarning" in line]
    assert warned == [], "\n".join(warned)
    (wheel,) = (tmp_path / "dist").glob("edgeport-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("edgeport/cli/__init__.py", "edgeport/pipeline/run.py", "edgeport/pipeline/compress/distill.py",
                     "edgeport/schemas/manifest.schema.json", "edgeport/devices/profiles/local.toml",
                     "edgeport/devices/emulated_pi/pi.sh", "edgeport/examples/digits.toml",
                     "edgeport/devices/runner.py", "edgeport/targets/tflite.py"):
        assert expected in names, expected
