"""Where an int8 model's disagreement with fp32 comes from: its weights or its activations, which
layers' weights, and how small the logits' error must be for a top-1 agreement budget to hold.

Reads a finished run of a classifier whose first output holds class scores (by default `edgeport tune examples/efficientnet-lite0.toml`,
run by `benchmarks/real_models.py`) and its ONNX Runtime int8 artifact, and prints a Markdown report:

- agreement and cosine on the held-out set of: the int8 artifact; the fp32 model with every weight
  replaced by the artifact's int8 weights (activations float); the difference is the activations' share;
- the ten layers whose int8 weights alone cost the most (the weight's own SQNR, the output's SQNR,
  agreement): a weight at int8's ceiling (~45 dB per channel) with a far lower output SQNR means the
  network amplifies that layer's rounding, and no choice of int8 scale removes it;
- agreement by the fp32 top-1/top-2 logit margin: how much of the disagreement sits on near-ties;
- agreement of fp32 logits with Gaussian noise of a few sizes added, against the int8 artifact's
  own error: how far int8 is from the budget in the unit that decides it.

    python benchmarks/int8_error_sources.py [--run runs/efficientnet-lite0] [--artifact onnxruntime-int8-minmax]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def outputs(model, inputs: dict[str, np.ndarray], threads: int = 0) -> np.ndarray:
    """The first output for every sample, one at a time (a model path or an in-memory ModelProto)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    count = len(next(iter(inputs.values())))
    return np.concatenate([session.run(None, {k: v[i : i + 1] for k, v in inputs.items()})[0] for i in range(count)])


def figures(reference: np.ndarray, out: np.ndarray) -> str:
    from edgeport.metrics import output_metrics

    m = output_metrics("logits", reference, out, scores=True)
    low, high = m.top1_interval
    return f"{m.top1_agreement:.4f} [{low:.3f}, {high:.3f}] | {m.cosine:.6f} | {m.sqnr_db:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/efficientnet-lite0"))
    parser.add_argument("--artifact", default="onnxruntime-int8-minmax")
    parser.add_argument("--layer-samples", type=int, default=300, help="held-out samples per single-layer model")
    args = parser.parse_args()

    import onnx
    from onnx import numpy_helper

    from edgeport.metrics import CONFIDENT_PROBABILITY, sqnr_db, top_probability
    from edgeport.targets.onnxruntime import int8_weights, with_weight_of

    with np.load(args.run / "calibration" / "evaluation.npz") as f:
        inputs = {k.removeprefix("input:"): f[k] for k in f.files if k.startswith("input:")}
    with np.load(args.run / "reference" / "outputs.npz") as f:
        reference = f[f.files[0]]
    float_model = onnx.load(str(args.run / "interchange" / "model.onnx"))
    int8_path = args.run / "artifacts" / args.artifact / "model.onnx"
    quant = onnx.load(str(int8_path))
    consts = {t.name: numpy_helper.to_array(t) for t in quant.graph.initializer}
    producers = {o: n for n in quant.graph.node for o in n.output}
    weights = int8_weights(quant, consts, producers)

    weights_only = float_model
    for _, weight, value in weights.values():
        weights_only = with_weight_of(weights_only, weight, value)
    int8_out = outputs(int8_path, inputs)
    lines = [f"## Where {args.artifact}'s error comes from ({len(reference)} held-out samples)", "",
             "| model | top-1 agreement [95%] | cosine | SQNR (dB) |", "|---|---:|---:|---:|",
             f"| fp32 exported (ONNX Runtime) | {figures(reference, outputs(args.run / 'interchange' / 'model.onnx', inputs))} |",
             f"| int8 weights, float activations | {figures(reference, outputs(weights_only, inputs))} |",
             f"| int8 artifact (weights and activations) | {figures(reference, int8_out)} |", ""]

    few = {k: v[: args.layer_samples] for k, v in inputs.items()}
    base = outputs(float_model, few)
    float_weights = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
    ranked = []
    for node, (op, weight, value) in weights.items():
        out = outputs(with_weight_of(float_model, weight, value), few)
        own = sqnr_db(float_weights[weight], value) if weight in float_weights else float("nan")
        ranked.append((sqnr_db(base, out), own, float((out.argmax(1) == base.argmax(1)).mean()), node, op))
    ranked.sort()
    lines += [f"Layers whose int8 weights alone cost the most (first {args.layer_samples} samples, against fp32):", "",
              "| layer | op | weight SQNR (dB) | output SQNR (dB) | top-1 agreement |", "|---|---|---:|---:|---:|"]
    lines += [f"| {node} | {op} | {own:.1f} | {sq:.1f} | {agree:.4f} |" for sq, own, agree, node, op in ranked[:10]]

    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    agrees = int8_out.argmax(1) == reference.argmax(1)
    lines += ["", "Agreement by the fp32 top-1/top-2 logit margin (near-ties flip under any rounding):", "",
              "| fp32 margin | samples | int8 top-1 agreement | share of int8's disagreements |",
              "|---|---:|---:|---:|"]
    for low, high in ((0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.5), (0.5, np.inf)):
        band = (margin >= low) & (margin < high)
        if band.any():
            lines.append(f"| [{low:g}, {high:g}) | {band.sum()} | {agrees[band].mean():.4f} | "
                         f"{(~agrees & band).sum() / max((~agrees).sum(), 1):.2f} |")

    top = top_probability(reference)
    if top is not None and 0 < (top >= CONFIDENT_PROBABILITY).sum() < len(top):
        confident = top >= CONFIDENT_PROBABILITY
        lines += ["", f"On the {confident.sum()} samples where fp32 gives its top class a probability of "
                  f"{CONFIDENT_PROBABILITY} or more, int8 agrees on {agrees[confident].mean():.4f}; on the other "
                  f"{(~confident).sum()}, {agrees[~confident].mean():.4f}."]

    rng = np.random.default_rng(0)
    error = (int8_out - reference).std()
    lines += ["", f"The int8 artifact's logit error has a standard deviation of {error:.4f}. The same budget against "
              "fp32 logits with Gaussian noise added (mean of 5 draws):", "",
              "| noise std | top-1 agreement |", "|---:|---:|"]
    for std in (0.005, 0.01, 0.02, 0.04, round(float(error), 4)):
        agree = np.mean([((reference + rng.normal(0, std, reference.shape)).argmax(1) == reference.argmax(1)).mean()
                         for _ in range(5)])
        lines.append(f"| {std:g} | {agree:.4f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
