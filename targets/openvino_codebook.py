"""OpenVINO codebook weight compression (NNCF `compress_weights`, CB4 or an adaptive codebook): each
weight becomes a 4-bit index into a 16-entry f8e4m3 codebook times a per-channel (or per-group)
fp16 scale, decompressed by the OpenVINO CPU plugin at run time.

Where it applies (nncf 3.4.0, checked on OpenVINO 2026.4.1): only to MatMul weights (Linear layers,
the last one too with all_layers). NNCF gives its primary 4-bit modes only to MatMul and embedding
weights; every Convolution gets the backup mode (int8 asymmetric per channel by default, or stays
float with backup = "none"). So an MLP is compressed whole, a CNN only in its classifier
(EfficientNet-Lite0: the 1280x1000 head, 28% of the weights; the digits CNN: 27%). The Torch, TorchFX
and ONNX backends of NNCF refuse the codebook modes; it works on an OpenVINO IR only.

The OpenVINO target applies it to its fp16 artifact when `codebook` is set in `[targets.openvino]`.
"""

from __future__ import annotations

from pathlib import Path

from edgeport.errors import require
from edgeport.types import zip_bytes

def codebook_compress(model, out_path: Path, mode: str, backup: str, samples: list | None = None) -> dict:
    """Compress the OpenVINO `model` and save it to `out_path` (.xml, its .bin beside it; the weights
    left in float as fp16). `mode`: cb4 (NNCF's fixed 16 f8e4m3 values) or adaptive (a codebook
    estimated per layer from the weights and `samples`, a list of model inputs); `backup`: what
    Convolutions get (int8 | none = keep float). One scale per output channel (a MatMul whose inputs
    it does not suit gets the backup). Returns which weights got the codebook, which int8, and the
    .bin's size raw and zipped."""
    nncf = require("nncf", "openvino")
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    compressed = nncf.compress_weights(
        model,
        mode=nncf.CompressWeightsMode.CB4 if mode == "cb4" else nncf.CompressWeightsMode.ADAPTIVE_CODEBOOK,
        all_layers=True, group_size=-1, ratio=1.0,
        backup_mode=nncf.BackupMode.INT8_ASYM if backup == "int8" else nncf.BackupMode.NONE,
        dataset=nncf.Dataset(samples) if samples else None,
        advanced_parameters=AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST),
    )
    ov.save_model(compressed, str(out_path), compress_to_fp16=True)
    binary = out_path.with_suffix(".bin")
    return {"mode": mode, "backup": backup, **weight_formats(compressed),
            "bin_bytes": binary.stat().st_size, "bin_zip_bytes": zip_bytes(binary)}


CODEBOOK_SUFFIX = "_nncf_codebook_idxs"  # how NNCF names a weight's codebook indices


def weight_formats(model) -> dict:
    """{"codebook_weights": [...], "int8_weights": [...]}: the weights stored as codebook indices
    and those stored as 8-bit integers."""
    codebook, backup = [], []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        name = op.get_friendly_name()
        if name.endswith(CODEBOOK_SUFFIX):
            codebook.append(name.removesuffix(CODEBOOK_SUFFIX))
        elif op.get_element_type().get_type_name() in ("u8", "i8") and not name.endswith("/zero_point"):
            backup.append(name)
    return {"codebook_weights": codebook, "int8_weights": backup}
