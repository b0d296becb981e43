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


def write_photo_crops(folder, n: int = 96, size: int = 16, seed: int = 0, name: str = "crops.npy") -> None:
    """Crops of scikit-learn's sample photos (real images), NCHW float in [0, 1]."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    crops = []
    for image in load_sample_images().images:
        for _ in range(n // 2):
            y, x = rng.integers(0, image.shape[0] - size), rng.integers(0, image.shape[1] - size)
            crops.append(image[y : y + size, x : x + size].transpose(2, 0, 1) / 255.0)
    np.save(folder / name, np.asarray(crops, np.float32))


class HardInt8Net(nn.Module):
    """A photo CNN built to be hard for int8, float-equivalent to a tame one: the depthwise conv's
    channels span a range of 1000 (one uint8 scale for its output crushes the small ones) and the
    pointwise conv after it compensates, so each of its rows holds outlier weights (one int8 scale
    per row crushes the rest). BatchNorm after the convs, as trained nets have it."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(16)
        self.pointwise = nn.Conv2d(16, 32, 1)
        self.conv = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)
        gains = 10 ** torch.linspace(-1.5, 1.5, 16)[torch.randperm(16, generator=g)]
        with torch.no_grad():
            for module in (self.stem, self.depthwise, self.pointwise, self.conv, self.head):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) / module.weight[0].numel() ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
            for bn in (self.stem_bn, self.depthwise_bn):
                bn.running_mean.copy_(0.1 * torch.randn(bn.num_features, generator=g))
                bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=g))
                bn.weight.copy_(0.8 + 0.4 * torch.rand(bn.num_features, generator=g))
                bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=g))
            self.depthwise_bn.weight.mul_(gains)
            self.depthwise_bn.bias.mul_(gains)
            self.pointwise.weight.div_(gains.reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x - 0.5)))
        x = torch.relu(self.depthwise_bn(self.depthwise(x)))
        x = torch.relu(self.conv(torch.relu(self.pointwise(x))))
        return self.head(x.mean((2, 3)))


def hard_int8_net() -> HardInt8Net:
    return HardInt8Net().eval()


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


# --- models shaped like the ones users bring (issue: real models) -----------------------------

TOKEN_LENGTH = 64  # a digit's 64 pixels read as a sentence of 64 tokens
VOCAB = 18  # 0 = padding, 1..17 = pixel intensity 0..16


def digit_sentences(images, seed: int = 0):
    """Digits as token sentences with padding: ids = intensity + 1, the tail cut at a random length
    (40..64) and padded with 0, attention_mask 1 on real tokens. int64, as tokenizers give them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = (np.rint(images.reshape(len(images), -1) * 16).astype(np.int64) + 1)
    lengths = rng.integers(40, TOKEN_LENGTH + 1, len(images))
    mask = (np.arange(TOKEN_LENGTH)[None] < lengths[:, None]).astype(np.int64)
    return ids * mask, mask


class TextEncoder(nn.Module):
    """A sentence encoder as sentence-transformers models are: token embedding + positions, one
    BERT-style attention block with an additive padding mask, masked mean pooling, L2
    normalisation. Its embedding module is called `embedding`, like the output users give it."""

    def __init__(self, dim: int = 64, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.embedding = nn.Embedding(VOCAB, dim)
        self.position = nn.Parameter(torch.randn(1, TOKEN_LENGTH, dim) * 0.02)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)  # trains the embedding; not part of forward()

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, n = input_ids.shape
        x = self.embedding(input_ids) + self.position[:, :n]
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        scores = scores + (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        x = self.norm1(x + self.proj(attended))
        x = self.norm2(x + self.mlp(x))
        weights = attention_mask[:, :, None].float()
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.pooled(input_ids, attention_mask), dim=-1)


class _EncoderClassifier(nn.Module):
    """Training view: digit images -> token sentences cut at random lengths -> class scores."""

    def __init__(self, encoder: TextEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = torch.round(x.reshape(len(x), -1) * 16).long() + 1
        lengths = torch.randint(40, TOKEN_LENGTH + 1, (len(x), 1))
        mask = (torch.arange(TOKEN_LENGTH)[None] < lengths).long()
        return self.encoder.head(self.encoder.pooled(ids * mask, mask))


def text_encoder() -> TextEncoder:
    """Trained (a few seconds, once per cache folder) to tell digits apart from their token sentences."""
    from edgeport.examples.digits import trained

    wrapped = trained(lambda: _EncoderClassifier(TextEncoder()), "text_encoder-v1", epochs=40)
    return wrapped.encoder.eval()


def write_text_data(folder, name: str = "sentences.npz") -> None:
    """Held-out digits as padded token sentences (input_ids, attention_mask: int64) with labels."""
    import numpy as np

    from edgeport.calibration.digits import digits_split

    _, _, x_test, y_test = digits_split()
    ids, mask = digit_sentences(x_test, seed=1)
    np.savez(folder / name, input_ids=ids, attention_mask=mask, labels=y_test)


TEXT_MODEL = """
[model]
source = "tests.models:text_encoder"
inputs = [{ name = "input_ids", shape = ["batch", 64], dtype = "int64" },
          { name = "attention_mask", shape = ["batch", 64], dtype = "int64" }]
output_names = ["embedding"]

[data]
source = "npy"
path = "sentences.npz"
calibration_samples = 128
"""


FRAME = 576  # a 24x24 view of a digit, flattened: the streaming model's input frame
STATE = 128


def digit_frames(images, shift: int):
    """Digits upsampled to 24x24 (each pixel 3x3), rolled `shift` pixels right, flattened: [N, 576]."""
    import numpy as np

    big = np.repeat(np.repeat(images[:, 0], 3, axis=1), 3, axis=2)
    return np.roll(big, shift, axis=2).reshape(len(images), FRAME).astype(np.float32)


class StreamingLSTM(nn.Module):
    """One step of a streaming model, as keyword spotters and audio denoisers ship: a frame and the
    LSTM state in; class scores and the new state out (h and c: two outputs of the same shape)."""

    def __init__(self):
        super().__init__()
        self.frontend = nn.Sequential(nn.Linear(FRAME, STATE), nn.ReLU())
        self.cell = nn.LSTMCell(STATE, STATE)
        self.head = nn.Linear(STATE, 10)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        h, c = self.cell(self.frontend(x), (h, c))
        return self.head(h), h, c


class _TwoFrames(nn.Module):
    """Training view: two frames of the same digit (shifted views), scored after the second."""

    def __init__(self, model: StreamingLSTM):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = frames_torch(x)
        zeros = torch.zeros(len(x), STATE)
        _, h, c = self.model(first, zeros, zeros)
        return self.model(second, h, c)[0]


def frames_torch(x: torch.Tensor):
    return torch.from_numpy(digit_frames(x.numpy(), 0)), torch.from_numpy(digit_frames(x.numpy(), 2))


def streaming_lstm() -> StreamingLSTM:
    from edgeport.examples.digits import trained

    return trained(lambda: _TwoFrames(StreamingLSTM()), "streaming_lstm-v1", epochs=10).model.eval()


def write_stream_data(folder, name: str = "frames.npz") -> None:
    """The second frame of each held-out digit with the real state after its first frame."""
    import numpy as np

    from edgeport.calibration.digits import digits_split

    _, _, x_test, y_test = digits_split()
    model = streaming_lstm()
    first, second = digit_frames(x_test, 0), digit_frames(x_test, 2)
    with torch.no_grad():
        zeros = torch.zeros(len(first), STATE)
        _, h, c = model(torch.from_numpy(first), zeros, zeros)
    np.savez(folder / name, x=second, h=h.numpy(), c=c.numpy(), labels=y_test)


STREAM_MODEL = """
[model]
source = "tests.models:streaming_lstm"
inputs = [{ name = "x", shape = ["batch", 576], dtype = "float32" },
          { name = "h", shape = ["batch", 128], dtype = "float32" },
          { name = "c", shape = ["batch", 128], dtype = "float32" }]
output_names = ["scores", "h_next", "c_next"]
state = { h = "h_next", c = "c_next" }

[data]
source = "npy"
path = "frames.npz"
calibration_samples = 128
"""


class HardDigitsNet(nn.Module):
    """A depthwise-separable digits CNN."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pw(self.dw(self.stem(x))))


def hard_digits_net(outlier: float = 300.0, spread: float = 2.0) -> HardDigitsNet:
    """HardDigitsNet trained on digits, then made hard for int8 without changing what it computes
    (the imbalance real depthwise nets have): two stem channels scaled up `outlier` times, undone
    by the depthwise conv (one per-tensor uint8 scale then crushes the other channels); the
    depthwise output channels spread over 10^+-`spread`, undone by the pointwise conv (whose
    weight rows then hold outliers for their per-channel int8 scale)."""
    from edgeport.examples.digits import trained

    model = trained(HardDigitsNet, "hard_digits_net-v1")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        scale = torch.ones(16)
        scale[:2] = outlier
        for p in (model.stem[1].weight, model.stem[1].bias):  # ReLU commutes with a positive scale
            p.mul_(scale)
        model.dw[0].weight.div_(scale.reshape(-1, 1, 1, 1))
        spreads = 10 ** torch.empty(16).uniform_(-spread, spread, generator=g)
        for p in (model.dw[1].weight, model.dw[1].bias):
            p.mul_(spreads)
        model.pw[0].weight.div_(spreads.reshape(1, -1, 1, 1))
    return model.eval()
