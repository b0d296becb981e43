"""Listing targets imports no backend; a missing runtime is one line naming its pip extra."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgeport.cli import app


def test_help_and_targets_import_no_backend():
    code = ("import sys; from edgeport.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
            "r = CliRunner().invoke(app, ['targets']); assert r.exit_code == 0; "
            "heavy = {'torch', 'onnxruntime', 'openvino', 'nncf', 'tensorflow', 'onnx'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture
def without_openvino(monkeypatch):
    """Make `import openvino` fail as if the package were not installed."""
    for name in [m for m in sys.modules if m == "openvino" or m.startswith("openvino.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "openvino", None)


def test_targets_lists_openvino_as_not_installed(without_openvino):
    out = CliRunner().invoke(app, ["targets", "--json"])
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["openvino"]["installed"] is False and rows["openvino"]["extra"] == "openvino"
    out = CliRunner().invoke(app, ["targets"])
    assert "pip install 'edgeport[openvino]'" in out.output


def test_export_to_a_missing_runtime_names_the_extra(without_openvino, config_file):
    out = CliRunner().invoke(app, ["export", str(config_file), "--target", "openvino"])
    assert out.exit_code == 2
    assert out.output.strip() == ("error: target openvino needs openvino, which is not installed: "
                                  "pip install 'edgeport[openvino]'")


def test_env_reports_versions():
    out = CliRunner().invoke(app, ["env", "--json"])
    data = json.loads(out.stdout)
    assert data["packages"]["torch"].startswith("2.") and data["machine"]["cores"] >= 1
