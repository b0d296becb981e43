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

from edgeport.errors import ConfigError, require

MODES = ("cb4", "adaptive")
BACKUPS = ("int8", "none")


def codebook_compress(ir_path: Path, out_path: Path, mode: str = "cb4", backup: str = "int8", group_size: int = -1,
                      samples: list | None = None, compress_to_fp16: bool = False) -> dict:
    """Compress the IR at `ir_path` (model.xml) into `out_path` (.xml, its .bin beside it). `mode`:
    cb4 (NNCF's fixed 16 f8e4m3 values) or adaptive (a codebook estimated per layer from the weights
    and `samples`, a list of model inputs); `backup`: what Convolutions get (int8 | none = keep
    float). group_size: input channels sharing a scale (-1 = one per output channel; a MatMul whose
    inputs it does not divide gets the largest divisor >= 32, else the backup). compress_to_fp16:
    the weights left in float are stored as fp16. Returns which weights
    got the codebook, which int8, and the .bin's size raw and zipped."""
    if mode not in MODES:
        raise ConfigError(f"codebook mode {mode!r}: choose one of {', '.join(MODES)}")
    if backup not in BACKUPS:
        raise ConfigError(f"codebook backup {backup!r}: choose one of {', '.join(BACKUPS)}")
    if mode == "adaptive" and not samples:
        raise ConfigError("codebook mode \"adaptive\" estimates the codebook from activations: give samples")
    ov = require("openvino", "openvino")
    nncf = require("nncf", "openvino")
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    model = ov.Core().read_model(str(ir_path))
    compressed = nncf.compress_weights(
        model,
        mode=nncf.CompressWeightsMode.CB4 if mode == "cb4" else nncf.CompressWeightsMode.ADAPTIVE_CODEBOOK,
        all_layers=True, group_size=group_size, ratio=1.0,
        backup_mode=nncf.BackupMode.INT8_ASYM if backup == "int8" else nncf.BackupMode.NONE,
        dataset=nncf.Dataset(samples) if samples else None,
        advanced_parameters=AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST),
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(compressed, str(out_path), compress_to_fp16=compress_to_fp16)
    from edgeport.pipeline.compress.measure import zip_bytes

    binary = out_path.with_suffix(".bin")
    return {"mode": mode, "backup": backup, **weight_formats(compressed),
            "bin_bytes": binary.stat().st_size, "bin_zip_bytes": zip_bytes(binary)}


def weight_formats(model) -> dict:
    """{"codebook_weights": [...], "int8_weights": [...]}: the weights stored as codebook indices
    (NNCF names them `<weight>_nncf_codebook_idxs`) and those stored as 8-bit integers."""
    codebook, backup = [], []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        name = op.get_friendly_name()
        if name.endswith("_nncf_codebook_idxs"):
            codebook.append(name.removesuffix("_nncf_codebook_idxs"))
        elif op.get_element_type().get_type_name() in ("u8", "i8") and not name.endswith("/zero_point"):
            backup.append(name)
    return {"codebook_weights": codebook, "int8_weights": backup}
