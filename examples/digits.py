"""A small CNN trained on scikit-learn's real digits data set: the model `edgeport demo` takes to the edge.

`trained_cnn()` trains once (a few seconds, fixed seed) on the train split
and caches the weights; later calls load them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from edgeport.calibration.digits import digits_split


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, padding=1), nn.BatchNorm2d(width * 2), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(width * 2, width * 4, 3, padding=1), nn.BatchNorm2d(width * 4), nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEPORT_CACHE_DIR", Path.home() / ".cache" / "edgeport"))


def train(model: nn.Module, epochs: int = 30, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    x_train, y_train, _, _ = digits_split()
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return model.eval()


def trained(build, name: str, epochs: int = 30) -> nn.Module:
    """`build()` trained on the digits train split, once per cache folder, then loaded.
    Seeded and single-threaded: the same weights in every process and on every machine."""
    path = cache_dir() / f"{name}.pt"
    torch.manual_seed(0)  # the initial weights too
    model = build()
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(model, epochs=epochs)
    finally:
        torch.set_num_threads(threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval()


def trained_cnn() -> DigitsCNN:
    """The demo model: trained on first use (a few seconds), then loaded from the cache."""
    return trained(DigitsCNN, "digits_cnn-v3")
