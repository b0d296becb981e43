"""Tiny models the tests build (factories referenced from test configs as tests.models:NAME)."""

from __future__ import annotations

import torch
from torch import nn

from edgeport.examples.digits import trained


class DigitsTransformer(nn.Module):
    """A pre-norm transformer block over the 8 rows of a digit (tokens of 8 pixels):
    nn.MultiheadAttention + LayerNorm + GELU MLP, mean-pooled into a classifier."""

    def __init__(self, dim: int = 64, heads: int = 4, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.position = nn.Parameter(torch.zeros(1, 8, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        rows = image[:, 0] if image.dim() == 4 else image  # [B, 1, 8, 8] or [B, 8, 8]: 8 tokens of 8 pixels
        x = self.embed(rows) + self.position
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(dim=1))


def digits_transformer() -> DigitsTransformer:
    """Trained on the digits train split once per cache folder (a few seconds)."""
    return trained(DigitsTransformer, "digits_transformer-v3", epochs=40)


ATTENTION_MODEL = """
[model]
source = "tests.models:digits_transformer"
inputs = [{ name = "image", shape = ["batch", 1, 8, 8], dtype = "float32" }]
output_names = ["logits"]
"""

TOKENS_MODEL = """
[model]
source = "tests.models:digits_transformer"
inputs = [{ name = "tokens", shape = ["batch", 8, 8], dtype = "float32" }]
output_names = ["logits"]

[data]
source = "npy"
path = "tokens.npz"
calibration_samples = 128
"""


def write_digit_tokens(folder) -> None:
    """The held-out digits as 3-D token arrays (8 rows of 8 pixels) with labels, for TOKENS_MODEL."""
    import numpy as np

    from edgeport.calibration.digits import digits_split

    _, _, x_test, y_test = digits_split()
    np.savez(folder / "tokens.npz", tokens=x_test[:, 0], labels=y_test)


class RgbNet(nn.Module):
    """A small 3-channel CNN: the input kind onnx2tf wants to fetch sample images for."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def rgb_net() -> RgbNet:
    torch.manual_seed(0)
    return RgbNet().eval()


def write_photo_crops(folder, n: int = 96, size: int = 16) -> None:
    """Crops of scikit-learn's sample photos (real images), NCHW float in [0, 1]."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    crops = []
    for image in load_sample_images().images:
        for _ in range(n // 2):
            y, x = rng.integers(0, image.shape[0] - size), rng.integers(0, image.shape[1] - size)
            crops.append(image[y : y + size, x : x + size].transpose(2, 0, 1) / 255.0)
    np.save(folder / "crops.npy", np.asarray(crops, np.float32))


class ResidualNet(nn.Module):
    """Conv blocks with a residual add: channel pruning must keep both branches consistent."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.head(torch.relu(h + self.block(h)))


def residual_net() -> ResidualNet:
    torch.manual_seed(0)
    return ResidualNet().eval()


def wide_mlp_inputs(n: int, seed: int = 1) -> torch.Tensor:
    """64-d inputs whose variance decays over directions, as image and sensor data do."""
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))[0]
    scales = 0.8 ** torch.arange(64, dtype=torch.float32)
    return (torch.randn(n, 64, generator=torch.Generator().manual_seed(seed)) * scales) @ basis.T


def aligned_linear(x: torch.Tensor, out_dim: int, decay: float, generator: torch.Generator) -> nn.Linear:
    """A Linear whose right singular vectors are its inputs' principal directions, strongest first,
    with geometrically decaying singular values: the structure training gives layers on real data."""
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(out_dim, x.shape[1])
    u = torch.linalg.qr(torch.randn(out_dim, k, generator=generator))[0]
    s = decay ** torch.arange(k, dtype=torch.float32)
    layer = nn.Linear(x.shape[1], out_dim)
    layer.weight.data = (u * s) @ vh[:k] * x.shape[1] ** 0.5 / s.norm()
    layer.bias.data.zero_()
    return layer


def wide_mlp() -> nn.Sequential:
    """64 -> 512 -> 512 -> 10, each layer aligned with what it sees (see aligned_linear)."""
    generator = torch.Generator().manual_seed(0)
    x = wide_mlp_inputs(2048, seed=0)
    l1 = aligned_linear(x, 512, 0.9, generator)
    h1 = torch.relu(l1(x)).detach()
    l2 = aligned_linear(h1, 512, 0.97, generator)
    l3 = aligned_linear(torch.relu(l2(h1)).detach(), 10, 0.7, generator)
    return nn.Sequential(l1, nn.ReLU(), l2, nn.ReLU(), l3).eval()


class NotTraceable(nn.Module):
    """Its output does not depend on its weights through autograd: torch-pruning finds no graph."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).detach().flatten(1)


def not_traceable() -> NotTraceable:
    return NotTraceable().eval()


class OutlierMLP(nn.Module):
    """A Linear whose activation has one channel a thousand times larger than the rest: one int8
    scale for the whole tensor crushes every other channel to a few levels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(64, 64)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, 10)
        with torch.no_grad():
            self.fc1.weight[7] *= 1000.0  # the outlier channel
            self.fc2.weight[:, 7] /= 1000.0  # ... compensated, so the float model is well behaved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(self.act(self.fc1(x)))))


def outlier_mlp() -> OutlierMLP:
    return OutlierMLP().eval()
