"""Every way a user can hand edgeport a model loads the same network."""

from __future__ import annotations

import textwrap

import pytest
import torch

from edgeport.errors import ConfigError
from edgeport.pipeline.config import ModelConfig
from edgeport.pipeline.model_loading import load_model

INPUTS = [{"name": "x", "shape": ["batch", 4]}]


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


def config(source, **kw):
    return ModelConfig.model_validate({"source": source, "inputs": INPUTS, **kw})


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return Tiny().eval()


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, batch: int = 5) -> bool:
    x = torch.randn(batch, 4)
    with torch.no_grad():
        return torch.allclose(a(x), b(x))


def test_python_file_factory_with_state_dict(tmp_path, tiny):
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        import torch
        class Tiny(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(4, 3)
            def forward(self, x):
                return self.fc(x)
        def build():
            return Tiny()
        """))
    torch.save(tiny.state_dict(), tmp_path / "w.pt")
    loaded = load_model(config("net.py:build", weights="w.pt"), tmp_path)
    assert same_outputs(loaded.module, tiny)
    assert loaded.outputs[0].shape == ["batch", 3]


def test_package_factory():
    loaded = load_model(ModelConfig.model_validate({
        "source": "edgeport.examples.digits:trained_cnn", "inputs": [{"name": "image", "shape": [1, 1, 8, 8]}]}), ".")
    assert loaded.outputs[0].shape == [1, 10]


def test_torchscript(tmp_path, tiny):
    torch.jit.script(tiny).save(str(tmp_path / "m.pt"))
    assert same_outputs(load_model(config("m.pt"), tmp_path).module, tiny)


def test_exported_program(tmp_path, tiny):
    torch.export.save(torch.export.export(tiny, (torch.randn(2, 4),)), str(tmp_path / "m.pt2"))
    assert same_outputs(load_model(config("m.pt2", inputs=[{"name": "x", "shape": [2, 4]}]), tmp_path).module, tiny, 2)


def test_pickled_model_needs_trust(tmp_path, tiny):
    torch.save(tiny, tmp_path / "whole.pt")
    with pytest.raises(ConfigError, match="only with --trust-model"):
        load_model(config("whole.pt"), tmp_path)
    assert same_outputs(load_model(config("whole.pt", trust_model=True), tmp_path).module, tiny)


def test_weights_that_do_not_fit(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="cannot load into the model"):
        load_model(config("tests.test_model_loading:Tiny", weights="w.pt"), tmp_path)


def test_digest_follows_the_weights(tmp_path, tiny):
    torch.save(tiny.state_dict(), tmp_path / "a.pt")
    with torch.no_grad():
        tiny.fc.bias += 1
    torch.save(tiny.state_dict(), tmp_path / "b.pt")
    a = load_model(config("tests.test_model_loading:Tiny", weights="a.pt"), tmp_path).digest
    b = load_model(config("tests.test_model_loading:Tiny", weights="b.pt"), tmp_path).digest
    assert a != b
