"""Demo datasets from scikit-learn's bundled files (nothing is downloaded), with fixed train/test splits."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

from bastion.core.data import Dataset


def digits(seed: int = 0) -> tuple[Dataset, Dataset]:
    """8×8 handwritten digits as (n, 1, 8, 8) floats in [0, 1]; 10 classes; 70/30 stratified split."""
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, bunch.target, test_size=0.3, random_state=seed, stratify=bunch.target)
    names = [str(i) for i in range(10)]
    return Dataset(xtr, ytr, "digits-train", names), Dataset(xte, yte, "digits-test", names)


def breast_cancer(seed: int = 0) -> tuple[Dataset, Dataset]:
    """Wisconsin breast cancer: 30 raw features (standardised inside the model); 70/30 stratified split."""
    bunch = load_breast_cancer()
    x = bunch.data.astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, bunch.target, test_size=0.3, random_state=seed, stratify=bunch.target)
    names = [str(n) for n in bunch.target_names]
    return Dataset(xtr, ytr, "breast-cancer-train", names), Dataset(xte, yte, "breast-cancer-test", names)


def digits_with_clean_set(seed: int = 0) -> tuple[Dataset, Dataset, Dataset]:
    """Digits as (train 1,100, a defender's clean set 300, test 397), in a seeded random order: the split the
    backdoor tests and `benchmarks/backdoor_peers.py` share (a poisoner gets the first, a defender the second)."""
    bunch = load_digits()
    order = np.random.default_rng(seed).permutation(len(bunch.target))
    x = (bunch.images / 16.0).astype(np.float32)[:, None][order]
    y = bunch.target.astype(np.int64)[order]
    return (Dataset(x[:1100], y[:1100], "digits-train"), Dataset(x[1100:1400], y[1100:1400], "digits-clean"),
            Dataset(x[1400:], y[1400:], "digits-test"))
