"""The config schema: examples validate, typos get the nearest key, CLI overrides win."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeport.errors import ConfigError
from edgeport.pipeline.config import load_config, to_toml
from tests.conftest import REPO, write_config

EXAMPLES = sorted((REPO / "examples").glob("*.toml"))


def test_there_are_examples():
    assert any(p.name == "digits.toml" for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(path: Path):
    config = load_config(path)
    assert config.name
    for name in config.targets:
        config.target_options(name)  # each target's options validate too


def test_unknown_key_suggests_the_nearest(tmp_path):
    path = write_config(tmp_path, "[verify]\nbtach = 8\n")
    with pytest.raises(ConfigError, match=r"unknown key 'verify.btach' \(did you mean \"batch\"\?\)"):
        load_config(path)


def test_unknown_key_inside_a_target(tmp_path):
    path = write_config(tmp_path, targets='[targets.onnxruntime]\nprecison = ["fp32"]\n')
    with pytest.raises(ConfigError, match=r"unknown key 'precison' \(did you mean \"precisions\"\?\)"):
        load_config(path)


def test_unknown_target_suggests_the_nearest(tmp_path):
    path = write_config(tmp_path, targets="[targets.onnxruntim]\n")
    with pytest.raises(ConfigError, match=r"unknown target 'onnxruntim' \(did you mean \"onnxruntime\"\?\)"):
        load_config(path)


def test_wrong_value_names_key_and_value(tmp_path):
    path = write_config(tmp_path, bench="[bench]\niterations = -3\n")
    with pytest.raises(ConfigError, match=r"bench.iterations: .*greater than 0.*-3"):
        load_config(path)


def test_malformed_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[model\n')
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_config(path)


def test_overrides_win_over_the_file_and_defaults_fill_the_rest(tmp_path):
    path = write_config(tmp_path)
    config = load_config(path, {"name": "other", "bench.threads": 2})
    assert config.name == "other" and config.bench.threads == 2
    assert config.verify.tolerance("int8").max_accuracy_drop == 1.0  # default
    assert config.verify.tolerance("fp32").min_cosine == 0.9999


def test_tolerance_override_keeps_other_defaults(tmp_path):
    path = write_config(tmp_path, "[verify.tolerances.int8]\nmin_cosine = 0.5\n")
    tol = load_config(path).verify.tolerance("int8")
    assert tol.min_cosine == 0.5 and tol.max_accuracy_drop == 1.0


def test_resolved_config_round_trips(tmp_path):
    config = load_config(write_config(tmp_path))
    again = tmp_path / "again.toml"
    again.write_text(to_toml(config))
    assert load_config(again).model_dump(exclude={"base_dir"}) == config.model_dump(exclude={"base_dir"})
