"""Every installed target, through the same checks: what the pipeline asks of a target is all it
needs to know about a runtime. A new target (built-in or from the entry point) passes these or
is not done."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import numpy as np
import pytest

from edgeport import targets
from edgeport.devices import local
from edgeport.pipeline.benchmark import BenchService, BenchSettings, thread_count
from edgeport.pipeline.bundle_templates import python_example
from edgeport.pipeline.stages import Stages
from edgeport.targets.base import QuantizeRequest, SourceModel, Target, TargetOptions, function_source
from tests.conftest import REPO

INSTALLED = [name for name in targets.available() if targets.is_installed(name)]


@pytest.fixture(scope="module")
def source(tmp_path_factory, model_cache):
    """The digits CNN exported once, and its data, as every target receives them."""
    from edgeport.calibration import build_sets
    from edgeport.pipeline.config import ModelConfig
    from edgeport.pipeline.interchange import export_onnx
    from edgeport.pipeline.model_loading import load_model

    folder = tmp_path_factory.mktemp("contract")
    config = ModelConfig(source="edgeport.examples.digits:trained_cnn",
                         inputs=[{"name": "image", "shape": ["batch", 1, 8, 8], "layout": "NCHW"}],
                         output_names=["logits"])
    model = load_model(config, folder)
    export_onnx(model, folder / "model.onnx")
    calibration, evaluation = build_sets("digits", model.inputs, 64, 32, 0)
    src = SourceModel(folder / "model.onnx", model.module, model.inputs, model.outputs,
                      export_static=lambda path: export_onnx(model, path, static_batch=True))
    return src, calibration, evaluation, folder


@pytest.mark.parametrize("name", INSTALLED)
def test_the_target_table_line_matches_the_class(name):
    info, cls = targets.info(name), targets.target_class(name)
    assert issubclass(cls, Target) and cls.name == name
    assert tuple(cls.precisions) == info.precisions and cls.extra == info.extra
    assert issubclass(cls.Options, TargetOptions)
    defaults = cls.Options()  # every option has a default: `[targets.NAME]` may be empty
    assert set(defaults.precisions) <= set(cls.precisions)
    assert cls.device_modules and cls.bundle_runtime.get("pip")


@pytest.mark.parametrize("name", INSTALLED)
def test_export_quantize_load_run_declare(name, source, tmp_path):
    """fp32 computes what PyTorch does; the integer precisions stay close; every file declares the
    IO its record says, found by name; the device loader and the example loader are self-contained."""
    import torch

    src, calibration, evaluation, _ = source
    target = targets.get(name)
    options = target.Options()
    feeds = {"image": evaluation.inputs["image"][:8]}
    with torch.no_grad():
        reference = src.module(torch.from_numpy(feeds["image"])).numpy()
    built = {}
    for precision in target.precisions:
        out = tmp_path / precision
        out.mkdir()
        if precision in target.float_precisions:
            artifact = target.export(src, precision, out, options, calibration)
        else:
            artifact = target.quantize(src, built["fp32"], QuantizeRequest(calibration, ["logits"]), precision, out,
                                       options)
        artifact.id = precision
        artifact.save(out)
        built[precision] = artifact
        session = target.load(artifact, 1)
        outputs = [session.run({a.key: a.from_source(feeds[a.name][i:i + 1]) for a in artifact.inputs})
                   for i in range(len(feeds["image"]))]
        got = np.concatenate([artifact.outputs[0].to_source(o[artifact.outputs[0].key]) for o in outputs])
        agreement = (got.argmax(1) == reference.argmax(1)).mean()
        assert agreement >= (1.0 if precision in target.float_precisions else 0.85), (precision, agreement)
        declared = target.declared(artifact)
        assert [t["name"] for t in declared["inputs"]] == [a.key for a in artifact.inputs]
        assert {t["name"] for t in declared["outputs"]} == {a.key for a in artifact.outputs}
    for loader in (target.device_loader, target.example_loader):
        compile(function_source(loader), f"{name}-loader", "exec")  # shipped as source: must stand alone


@pytest.mark.parametrize("name", INSTALLED)
def test_the_runner_times_a_target_it_does_not_know(name, source, tmp_path):
    """The on-device runner names no runtime: the target's loader arrives beside it."""
    src, calibration, evaluation, _ = source
    target = targets.get(name)
    out = tmp_path / "fp32"
    out.mkdir()
    artifact = target.export(src, "fp32", out, target.Options(), calibration)
    artifact.id = "fp32"
    artifact.save(out)
    service = BenchService(BenchSettings(iterations=5, min_seconds=0, warmup=1), threads=1)
    with service:
        result = service.measure(artifact, service.profile("local"), target.runtime_variants(target.Options())[0],
                                 {"image": evaluation.inputs["image"][:4]})
    assert result["iterations"] >= 5 and result["threads"] == 1 and result["options"]["inputs"].startswith("4 held-out")


@pytest.mark.parametrize("name", INSTALLED)
def test_the_bundle_example_is_the_generic_code_plus_the_targets_loader(name):
    example = python_example(function_source(targets.target_class(name).example_loader))
    compile(example, "example.py", "exec")
    assert "def load(path" in example and f'"{name}"' not in example


def test_nothing_outside_targets_names_a_runtime():
    """Pipeline, devices and the front door ask the target; only the target table and the
    self-contained runner's docs may name one (the grep the architecture issue asks for)."""
    names = [n for n in targets.BUILTIN]
    offenders = []
    for folder in ("pipeline", "devices", "edgeport", "calibration"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if f'"{n}"' in text]
    assert offenders == [], offenders


def test_the_thread_rule():
    """A [[bench.devices]] entry > the command line > [bench] > the device profile."""
    assert thread_count(entry=3, cli=2, bench=1, profile=4) == 3
    assert thread_count(entry=None, cli=2, bench=1, profile=4) == 2
    assert thread_count(entry=None, cli=None, bench=1, profile=4) == 1
    assert thread_count(entry=None, cli=None, bench=None, profile=4) == 4
    assert thread_count(entry=0, cli=2, bench=None, profile=4) == 0  # 0 (every core) is a choice, not "unset"


def test_the_thread_rule_reaches_local_and_remote_devices(tmp_path):
    """The bug the rule fixes: for the local device a device entry's threads and the profile were
    ignored, and for remote devices [bench] threads never applied."""
    from edgeport.devices.profiles import SshProfile

    (tmp_path / "box.toml").write_text('transport = "ssh"\nhost = "127.0.0.1"\nthreads = 4\n')
    service = BenchService(threads=2, devices_dir=tmp_path)  # [bench] threads = 2 (or --threads 2)
    local_profile, box = service.profile("local"), service.profile("box")
    assert isinstance(box, SshProfile)
    assert service.request(local_profile)["threads"] == 2 and service.request(box)["threads"] == 2
    assert service.request(local_profile, entry_threads=1)["threads"] == 1
    assert BenchService(devices_dir=tmp_path).request(box)["threads"] == 4  # nothing set: the profile's


def test_no_import_cycles():
    """Modules import downward only, lazily inside a function too: a pair of modules that import
    each other is a design smell (transport and its transports, report and search_report, were)."""
    modules = {}
    for folder, package in (("edgeport", "edgeport"), ("pipeline", "edgeport.pipeline"), ("targets", "edgeport.targets"),
                            ("devices", "edgeport.devices"), ("calibration", "edgeport.calibration")):
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            modules[".".join([package, *[p for p in parts if p != "__init__"]])] = path
    graph = {}
    for module, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeport"):
                named = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                deps |= named or {node.module}  # `from edgeport import targets` imports edgeport.targets
        graph[module] = deps
    cycles = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                     if a != b and a in graph.get(b, set())})
    assert cycles == [], cycles


def test_stage_keys_hold_the_stage_code(tmp_path):
    """A changed stage is redone without a version bump: its key holds a hash of its code."""
    from edgeport.pipeline.stages import code_hash

    assert code_hash("edgeport.pipeline.verify") != code_hash("edgeport.pipeline.build")
    stages = Stages(tmp_path)
    calls = []
    stages.record("s", "a.json", {"x": 1, "code": "v1"}, lambda: calls.append(1) or {})
    stages.record("s", "a.json", {"x": 1, "code": "v1"}, lambda: calls.append(2) or {})
    stages.record("s", "a.json", {"x": 1, "code": "v2"}, lambda: calls.append(3) or {})
    assert calls == [1, 3]


def test_edgeport_help_imports_no_backend():
    """The target table is static: --help and `edgeport targets` import no runtime."""
    code = ("import sys, edgeport.cli; from edgeport import targets; targets.available(); "
            "print(json.dumps(sorted(m for m in ('onnxruntime', 'openvino', 'ai_edge_litert', 'tensorflow', 'torch') "
            "if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
