"""scikit-learn's digits (1,797 real 8x8 handwritten digits), with one fixed train/test split.

The split never depends on the sampling seed, so a model trained on the
train split is never evaluated on a sample it saw.
"""

from __future__ import annotations

from functools import cache

import numpy as np

SPLIT_SEED = 0
TEST_FRACTION = 0.3
SAMPLE_SHAPE = (1, 8, 8)  # C, H, W


@cache
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test); images scaled to [0, 1], NCHW float32."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target.astype(np.int64), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=data.target
    )
    return x_train, y_train, x_test, y_test
