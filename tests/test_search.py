"""`edgeport tune`: candidates, budget verdicts, pruning, Pareto report, cache, Ray vs local."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeport import load_config
from edgeport.cli import app
from edgeport.metrics import Budget
from edgeport.pipeline.search import judge, plan, tune
from edgeport.pipeline.search_report import pareto_front
from tests.conftest import write_config
from tests.test_calibration import GAUSSIAN, OUTLIER_MODEL

pytestmark = pytest.mark.onnxruntime
cli = CliRunner()
BENCH = "[bench]\niterations = 30\nmin_seconds = 0.0\nwarmup = 2\nthreads = 1\n"


def digits_search(tmp_path, search: str, name: str = "tune", targets: str | None = None, bench: str = BENCH):
    targets = targets or '[targets.onnxruntime]\nprecisions = ["fp32", "int8"]\n'
    return write_config(tmp_path, f"[search]\nworkers = 2\n{search}", name=name, targets=targets, bench=bench)


def test_pareto_front_and_budget_verdicts():
    points = [(1.0, 0.90), (2.0, 0.99), (3.0, 0.98), (0.5, 0.80), (2.0, 0.95)]
    assert pareto_front(points) == [3, 0, 1]  # (3.0, 0.98) and (2.0, 0.95) are beaten by (2.0, 0.99)
    def verify(**figures):
        outputs = [{"name": "logits", "max_abs": 0.1, "sqnr_db": 30.0, "cosine": 0.999, **figures}]
        return {"outputs": outputs, "accuracy": figures.get("accuracy"), "reference_accuracy": 0.97}

    met, why, short = judge(verify(top1_agreement=0.985), Budget(min_top1_agreement=0.99))
    assert not met and why == "output 'logits': top-1 agreement 0.985 outside min_top1_agreement = 0.99"
    assert short == pytest.approx(0.005)
    met, why, short = judge(verify(accuracy=0.95), Budget(max_accuracy_drop=1.0))
    assert not met and "2.00 points below PyTorch's 97.00% (max_accuracy_drop = 1)" in why and short == pytest.approx(1.0)
    assert judge(verify(top1_agreement=1.0, cosine=0.9999), Budget(min_top1_agreement=0.99, min_cosine=0.999))[0]
    met, why, _ = judge(verify(), Budget(min_top1_agreement=0.99))  # an embedding: nothing to measure it on
    assert not met and why.startswith("no top-1 agreement: no output holds class scores")
    # agreement on the samples PyTorch is sure of: the near-ties that flip do not count
    confident = verify(top1_agreement=0.9, confident_top1_agreement=0.995)
    assert judge(confident, Budget(min_confident_top1_agreement=0.99))[0]
    met, why, short = judge(verify(top1_agreement=0.9, confident_top1_agreement=0.98),
                            Budget(min_confident_top1_agreement=0.99))
    assert not met and "confident samples 0.98 outside min_confident_top1_agreement = 0.99" in why
    assert short == pytest.approx(0.01)


def test_a_confident_budget_reaches_the_accuracy_aware_fallback(tmp_path, model_cache):
    config = load_config(digits_search(tmp_path, "min_confident_top1_agreement = 0.995\n"))
    aware = next(c for c in plan(config) if c.label == "onnxruntime/int8/minmax-aware")
    assert aware.options.budget.limits == {"min_confident_top1_agreement": 0.995}


def test_plan_is_the_product_of_the_search_axes(tmp_path, model_cache):
    targets = ('[targets.onnxruntime]\nprecisions = ["fp32", "int8"]\n\n'
               '[targets.tflite]\nprecisions = ["fp32", "int8"]\n')
    config = load_config(digits_search(tmp_path, 'calibration_methods = ["minmax", "entropy", "percentile"]\n'
                                                 "min_top1_agreement = 0.99\n", targets=targets))
    labels = [c.label for c in plan(config)]
    ort_int8 = [f"onnxruntime/int8/{m}{a}" for m in ("minmax", "entropy", "percentile") for a in ("", "-aware")]
    # TFLite's int8 has neither calibration methods nor a float fallback here: one candidate.
    assert labels == ["onnxruntime/fp32", *ort_int8, "tflite/fp32", "tflite/int8"]
    aware = next(c for c in plan(config) if c.label == "onnxruntime/int8/entropy-aware")
    assert aware.options.min_top1_agreement == 0.99 and aware.options.calibration_method == "entropy"


def test_search_without_a_budget_is_one_line(tmp_path, model_cache):
    code = cli.invoke(app, ["tune", str(digits_search(tmp_path, "objective = \"size\"\n"))])
    assert code.exit_code == 2
    assert ("a budget is needed: min_top1_agreement, min_confident_top1_agreement, max_accuracy_drop or min_cosine"
            in code.output)


def test_tune_reports_every_candidate_packs_the_choice_and_reruns_from_cache(tmp_path, model_cache):
    config = digits_search(tmp_path, 'calibration_methods = ["minmax", "percentile"]\nmin_top1_agreement = 0.99\n',
                           bench=BENCH + "processes = 3\n")
    first = cli.invoke(app, ["tune", str(config)])
    assert first.exit_code == 0, first.output
    run_dir = tmp_path / "runs" / "tune"
    report = json.loads((run_dir / "report.json").read_text())["search"]
    verdicts = {c["label"]: (c["status"], c["reason"]) for c in report["candidates"]}
    assert set(verdicts) == {"onnxruntime/fp32", "onnxruntime/int8/minmax", "onnxruntime/int8/minmax-aware",
                             "onnxruntime/int8/percentile", "onnxruntime/int8/percentile-aware"}
    # Plain int8 meets 0.99 on digits: the fallback variants are pruned, never built.
    assert verdicts["onnxruntime/int8/minmax-aware"] == ("pruned", "plain int8 with this method already meets the budget")
    assert not (run_dir / "artifacts" / "onnxruntime-int8-minmax-aware").exists()
    chosen = report["chosen"]
    assert chosen["verify"]["top1_agreement"] >= 0.99 and chosen["status"] == "chosen"
    kept = [c for c in report["candidates"] if c["status"] in ("kept", "chosen")]
    assert chosen["p50_ms"] == min(c["p50_ms"] for c in kept)
    # processes = 3: three rounds, every candidate and PyTorch once per round, in turn; the median round counts
    rows = {(a["target"], a["precision"], a["variant"]): a for a in json.loads((run_dir / "report.json").read_text())["artifacts"]}
    for c in kept:
        (bench,) = rows[(c["target"], c["precision"], c["variant"])]["bench"]
        assert len(bench["p50_per_process_ms"]) == 3 and bench["p50_ms"] == sorted(bench["p50_per_process_ms"])[1]
    rounds = sorted(p.name for p in (run_dir / "bench" / "local").glob("*.json"))
    assert rounds == sorted(f"{slug}-round{k}.json" for slug in ("onnxruntime-fp32", "onnxruntime-int8-minmax",
                                                                  "onnxruntime-int8-percentile", "pytorch-fp32")
                            for k in range(3))
    md = (run_dir / "report.md").read_text()
    assert "## Search" in md and all(label in md for label in verdicts)
    for png in ("pareto_latency.png", "pareto_size.png"):
        assert f"]({png})" in md and (run_dir / png).stat().st_size > 10_000
    bundles = list((run_dir / "bundles").iterdir())  # the chosen artifact, and only it, is packed
    slug = "-".join(filter(None, ["tune", chosen["target"], chosen["precision"], chosen["variant"]]))
    assert [b.name for b in bundles] == [slug]
    manifest = json.loads((bundles[0] / "manifest.json").read_text())
    assert manifest["precision"] == chosen["precision"] and manifest["target"] == chosen["target"]

    again = cli.invoke(app, ["tune", str(config)])
    assert again.exit_code == 0, again.output
    assert "built:      0 stage(s) new" in again.output
    assert f"chosen:     {chosen['label']} " in again.output


def test_recipes_build_apart_and_are_judged_against_the_original(tmp_path, model_cache):
    """A recipe's steps follow the run's own, in a run folder of its own; its candidates are compared
    with the ORIGINAL model (the budget is about it): 90% of the weights zeroed shows as lost agreement."""
    recipes = ('accuracy_aware = [false]\nmin_top1_agreement = 0.95\nrecipes = ["none", "sparse", "gutted"]\n\n'
               '[[search.recipe.sparse]]\nmethod = "prune-unstructured"\nratio = 0.2\n\n'
               '[[search.recipe.gutted]]\nmethod = "prune-unstructured"\nratio = 0.95\n')
    config = load_config(digits_search(tmp_path, recipes))
    assert [c.label for c in plan(config, "sparse")] == ["onnxruntime/fp32/sparse", "onnxruntime/int8/sparse-minmax"]
    # QAT only prepares the model for int8: its float model is no candidate
    assert [c.label for c in plan(config, "qat")] == ["onnxruntime/int8/qat-minmax"]
    result = tune(config)
    by_label = {c.label: c for c in result.candidates}
    assert len(by_label) == 6
    gutted = by_label["onnxruntime/fp32/gutted"]
    assert gutted.status == "rejected" and gutted.verify["top1_agreement"] < 0.9  # vs the pruned model it would be ~1
    assert by_label["onnxruntime/fp32/sparse"].status == "kept"
    run_dir = tmp_path / "runs" / "tune"
    assert by_label["onnxruntime/int8/sparse-minmax"].path == "recipes/sparse/artifacts/onnxruntime-int8-sparse-minmax"
    assert (run_dir / "recipes" / "sparse" / "compress" / "1-prune-unstructured" / "model.pt2").is_file()
    report = json.loads((run_dir / "report.json").read_text())
    paths = {a["variant"]: a["path"] for a in report["artifacts"]}
    assert paths["sparse-minmax"] == "recipes/sparse/artifacts/onnxruntime-int8-sparse-minmax"
    assert all((run_dir / p / "artifact.json").is_file() for p in paths.values())
    unknown = cli.invoke(app, ["tune", str(digits_search(tmp_path, 'min_cosine = 0.9\nrecipes = ["qta"]\n', name="bad"))])
    assert unknown.exit_code == 2 and 'unknown recipe \'qta\' (did you mean "qat"?)' in unknown.output


def test_accuracy_aware_candidates_are_built_where_plain_int8_misses(tmp_path):
    """The outlier model: plain int8 is far off (cosine < 0.9); the fallback keeps `relu` in float."""
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((400, 64)).astype(np.float32))
    config = write_config(tmp_path, model=OUTLIER_MODEL, data=GAUSSIAN, bench=BENCH,
                          targets='[targets.onnxruntime]\nprecisions = ["int8"]\n',
                          body='[search]\nworkers = 1\nmin_cosine = 0.999\ncalibration_methods = ["minmax", "percentile"]\n')
    result = tune(load_config(config))
    by_label = {c.label: c for c in result.candidates}
    plains = {m: by_label[f"onnxruntime/int8/{m}"] for m in ("minmax", "percentile")}
    for plain in plains.values():
        assert plain.status == "rejected" and plain.reason.startswith("output 'output': cosine ")
        assert "outside min_cosine = 0.999" in plain.reason
        assert not plain.verify["passed"] and plain.p50_ms is None  # failed verification: never benchmarked
    # One fallback, from the method whose plain int8 came closer; the other is pruned, never built.
    closer = max(plains, key=lambda m: plains[m].verify["cosine"])
    other = next(m for m in plains if m != closer)
    aware, pruned = by_label[f"onnxruntime/int8/{closer}-aware"], by_label[f"onnxruntime/int8/{other}-aware"]
    assert aware.status == "chosen" and aware.float_layers[0] == "relu" and aware.verify["cosine"] >= 0.999
    assert pruned.status == "pruned" and f"closest to the budget ({closer}," in pruned.reason and pruned.path is None


def test_an_agreement_budget_without_class_scores_stops_before_building(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((200, 64)).astype(np.float32))
    config = write_config(tmp_path, model=OUTLIER_MODEL, data=GAUSSIAN, bench=BENCH,
                          targets='[targets.onnxruntime]\nprecisions = ["int8"]\n',
                          body='[search]\nworkers = 1\nmin_top1_agreement = 0.99\n')
    result = cli.invoke(app, ["tune", str(config)])
    assert result.exit_code == 2 and "min_top1_agreement needs an output of class scores" in result.output
    assert not (tmp_path / "runs" / "tune" / "artifacts").exists()


def test_a_budget_nothing_meets_names_the_closest(tmp_path, model_cache):
    config = digits_search(tmp_path, 'precisions = ["int8"]\naccuracy_aware = [false]\nmin_cosine = 0.9999999\n')
    result = cli.invoke(app, ["tune", str(config)])
    assert result.exit_code == 2
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert ("no candidate meets min_cosine = 0.9999999: the closest is onnxruntime/int8/minmax (output 'logits': "
            "cosine 0.99") in line
    assert " short)" in line
    assert (tmp_path / "runs" / "tune" / "report.md").is_file()  # the verdicts are there to read
    # Outside the budget but verified: timed anyway, so the latency Pareto front shows the trade-off.
    search = json.loads((tmp_path / "runs" / "tune" / "report.json").read_text())["search"]
    (int8,) = [c for c in search["candidates"] if c["label"] == "onnxruntime/int8/minmax"]
    assert int8["status"] == "rejected" and int8["verify"]["passed"] and int8["p50_ms"] > 0


@pytest.mark.ray
def test_ray_and_local_choose_the_same_artifact(tmp_path, model_cache):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'edgeport[ray]'")
    search = ('calibration_methods = ["minmax", "percentile"]\naccuracy_aware = [false]\nobjective = "size"\n'
              "min_top1_agreement = 0.99\n")
    chosen = {}
    for executor in ("local", "ray"):
        folder = tmp_path / executor
        folder.mkdir()
        config = load_config(digits_search(folder, search + f'executor = "{executor}"\n', name=executor))
        result = tune(config)
        assert result.executor.startswith("Ray at local" if executor == "ray" else "local process pool")
        chosen[executor] = (result.chosen.label, result.chosen.size_bytes)
        assert sum(c.status in ("kept", "chosen") for c in result.candidates) == 3
    assert chosen["ray"] == chosen["local"]


def test_crops_are_real_photos_of_disjoint_scenes(tmp_path):
    """Evaluation crops come from photos calibration never sees: agreement on unseen scenes."""
    from PIL import Image

    from edgeport.calibration.crops import EVALUATION_SCENES, write_crops

    result = cli.invoke(app, ["crops", str(tmp_path / "crops"), "--calibration", "12", "--per-scene", "3",
                              "--size", "64"])
    assert result.exit_code == 0, result.output
    calib = sorted((tmp_path / "crops" / "calibration").glob("*.png"))
    evaluation = sorted((tmp_path / "crops" / "evaluation").glob("*.png"))
    assert len(calib) == 12 and len(evaluation) == 3 * len(EVALUATION_SCENES)
    assert {p.name.rsplit("-", 1)[0] for p in evaluation} == set(EVALUATION_SCENES)
    assert not {p.name.rsplit("-", 1)[0] for p in calib} & set(EVALUATION_SCENES)  # scenes never cross
    pixels = [np.asarray(Image.open(p)) for p in calib + evaluation]
    assert all(p.shape == (64, 64, 3) and p.std() > 5 for p in pixels)  # real image content, not blank
    assert write_crops(tmp_path / "crops", 12, 3, 64)["written"] == 0  # a complete set is kept
