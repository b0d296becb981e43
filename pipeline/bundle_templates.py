"""example.py, generated into every bundle: the feeding code every runtime shares; the target adds its `load`."""

from __future__ import annotations

EXAMPLE = '''"""Run the bundled model the way an app does: inputs in, outputs out, as manifest.json describes them.

    python example.py IMAGE            an image model: preprocess the image, print the top class
    python example.py INPUTS.npz       any model: one array per input name, samples along the first axis
                                       (token ids and attention masks, audio frames, ...). A model with
                                       recurrent state runs the samples as a stream, feeding its state back.
    python example.py --self-test      run samples.npz and compare with the outputs PyTorch gave for them

Needs numpy and the runtime (Pillow for images). Every tensor is found by name, never by position.
"""

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MANIFEST = json.loads((HERE / "manifest.json").read_text())


def to_runtime(spec: dict, x: np.ndarray) -> np.ndarray:
    """A model-layout array as the runtime takes it: its layout, int8 quantization or integer width."""
    if spec.get("source_axes"):  # e.g. TFLite takes images NHWC
        x = x.transpose(spec["source_axes"])
    if spec["dtype"] in ("int8", "uint8") and spec.get("scale"):
        info = np.iinfo(spec["dtype"])
        x = np.clip(np.round(x / spec["scale"]) + spec["zero_point"], info.min, info.max)
    return np.ascontiguousarray(x.astype(spec["dtype"]))


def from_runtime(spec: dict, y: np.ndarray) -> np.ndarray:
    """A runtime output as the PyTorch model gave it: dequantized, in the model's layout."""
    y = np.asarray(y)
    if spec["dtype"] in ("int8", "uint8") and spec.get("scale"):
        y = (y.astype(np.float32) - spec["zero_point"]) * spec["scale"]
    if spec.get("source_axes"):
        y = y.transpose(np.argsort(spec["source_axes"]))
    return y


def infer(session, arrays: dict) -> dict:
    """One inference: arrays by the model's input names in, outputs by the model's output names out."""
    feeds = {spec.get("runtime_name") or spec["name"]: to_runtime(spec, arrays[spec["name"]]) for spec in MANIFEST["inputs"]}
    raw = session(feeds)
    return {spec["name"]: from_runtime(spec, raw[spec.get("runtime_name") or spec["name"]]) for spec in MANIFEST["outputs"]}


def preprocess(path: str) -> np.ndarray:
    """Raw image -> the model's input (batch of one), following manifest["preprocessing"]."""
    from PIL import Image

    pre = MANIFEST["preprocessing"] or {}
    image = Image.open(path).convert("L" if pre.get("channel_order") == "gray" else "RGB")
    if pre.get("resize"):
        height, width = pre["resize"]
        image = image.resize((width, height), Image.BILINEAR)
    if pre.get("center_crop"):
        height, width = pre["center_crop"]
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    x = np.asarray(image, dtype=np.float32) * pre.get("scale", 1.0)
    x = x[:, :, None] if x.ndim == 2 else x
    if pre.get("channel_order") == "BGR":
        x = x[:, :, ::-1]
    if pre.get("mean") is not None:
        x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    x = x[None]  # NHWC with a batch of one
    return x.transpose(0, 3, 1, 2) if pre.get("layout", "NCHW") == "NCHW" else x


def samples_of(path: str) -> list:
    """One dict of input arrays (batch of one) per sample of an .npz holding one array per input."""
    with np.load(path) as data:
        arrays = {spec["name"]: data[spec["name"]] for spec in MANIFEST["inputs"] if spec["name"] in data.files}
    missing = [spec["name"] for spec in MANIFEST["inputs"] if spec["name"] not in arrays and spec["name"] not in MANIFEST["state"]]
    if missing:
        sys.exit(f"{path}: no array for input(s) {', '.join(missing)}")
    count = len(next(iter(arrays.values())))
    return [{name: a[i : i + 1].astype(dtype_of(name)) for name, a in arrays.items()} for i in range(count)]


def dtype_of(name: str) -> str:
    spec = next(s for s in MANIFEST["inputs"] if s["name"] == name)
    return spec.get("source_dtype") or ("float32" if spec.get("scale") else spec["dtype"])


def stream(session, samples: list) -> list:
    """Run samples in order; with recurrent state, each step's state outputs feed the next step
    (zeros at the start), as a streaming app does."""
    state = {name: np.zeros([1, *shape_of(name)[1:]], dtype_of(name)) for name in MANIFEST["state"]}
    results = []
    for arrays in samples:
        arrays = {**state, **{k: v for k, v in arrays.items() if k not in state or not results}}
        out = infer(session, arrays)
        state = {name: out[fed] for name, fed in MANIFEST["state"].items()}
        results.append(out)
    return results


def shape_of(name: str) -> list:
    spec = next(s for s in MANIFEST["inputs"] if s["name"] == name)
    shape = spec["shape"]
    return [shape[a] for a in np.argsort(spec["source_axes"])] if spec.get("source_axes") else shape


def describe(out: dict) -> str:
    """A class name (or index) for class-score outputs, shape and first values for the others."""
    labels = (HERE / MANIFEST["labels"]).read_text().splitlines() if MANIFEST["labels"] else None
    if list(out) == MANIFEST["class_scores"][:1]:  # a classifier: just the class
        top = int(next(iter(out.values())).reshape(-1).argmax())
        return labels[top] if labels else str(top)
    parts = []
    for name, y in out.items():
        if name in MANIFEST["class_scores"]:
            top = int(y.reshape(-1).argmax())
            parts.append(f"{name}: {labels[top] if labels else top}")
        else:
            parts.append(f"{name}: {list(y.shape)} {np.array2string(y.reshape(-1)[:4], precision=4)}...")
    return "; ".join(parts)


def self_test(session) -> None:
    """Every sample of samples.npz through the same path as an app; each output must match PyTorch's."""
    with np.load(HERE / "samples.npz") as data:
        expected = {spec["name"]: data[f"expected:{spec['name']}"] for spec in MANIFEST["outputs"]}
    limits = MANIFEST["self_test"]
    samples = samples_of(str(HERE / "samples.npz"))
    for i, arrays in enumerate(samples):
        out = infer(session, arrays)
        for name, want in expected.items():
            got, ref = out[name].astype(np.float64).ravel(), want[i].astype(np.float64).ravel()
            norms = np.linalg.norm(got) * np.linalg.norm(ref)
            cosine = float(got @ ref / norms) if norms else float(np.array_equal(got, ref))
            noise = float(np.sum((got - ref) ** 2))
            sqnr = 300.0 if noise == 0 else 10 * np.log10(max(float(np.sum(ref**2)), 1e-30) / noise)
            if cosine < limits["min_cosine"] or sqnr < limits["min_sqnr_db"]:
                sys.exit(f"self-test failed: sample {i}, output {name!r}: cosine {cosine:.6f}, SQNR {sqnr:.1f} dB "
                         f"against PyTorch (needs {limits['min_cosine']} and {limits['min_sqnr_db']} dB)")
    print(f"ok: {len(samples)} sample(s), every output as close to PyTorch as verification measured")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    session = load(HERE / MANIFEST["model_file"])
    if sys.argv[1] == "--self-test":
        self_test(session)
    elif sys.argv[1].endswith(".npz"):
        for step, out in enumerate(stream(session, samples_of(sys.argv[1]))):
            print(f"{step}: {describe(out)}")
    else:
        name = MANIFEST["inputs"][0]["name"]
        print(describe(infer(session, {name: preprocess(sys.argv[1])})))

'''

MAIN = '''

if __name__ == "__main__":
    main()
'''


def python_example(loader_source: str) -> str:
    """example.py: the generic feeding code, the target's `load(path)`, and main."""
    return EXAMPLE + "\n\n" + loader_source + MAIN
