"""Tiny models the tests build (factories referenced from test configs as tests.models:NAME)."""

from __future__ import annotations

import os

import torch
from torch import nn

from edgeport.examples.digits import cache_dir, train


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
        x = self.embed(image[:, 0]) + self.position  # [B, 1, 8, 8] -> 8 tokens of 8 pixels
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(dim=1))


def digits_transformer() -> DigitsTransformer:
    """Trained on the digits train split once per cache folder (a few seconds)."""
    torch.manual_seed(0)
    model = DigitsTransformer()
    path = cache_dir() / "digits_transformer-v1.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    train(model, epochs=40)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval()


ATTENTION_MODEL = """
[model]
source = "tests.models:digits_transformer"
inputs = [{ name = "image", shape = ["batch", 1, 8, 8], dtype = "float32" }]
output_names = ["logits"]
"""
