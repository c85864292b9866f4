"""Data: the data sets scikit-learn ships, random train/test splits, standardisation.

Nothing is downloaded: iris, wine, breast_cancer and digits ship inside scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["BUILTIN_DATASETS", "Dataset", "load_builtin", "random_split", "standardise"]

BUILTIN_DATASETS = ("iris", "wine", "breast_cancer", "digits")


@dataclass(frozen=True)
class Dataset:
    """Features X (n, d) as float64 and integer class labels y (n,) in 0..n_classes-1."""

    name: str
    X: NDArray[np.float64]
    y: NDArray[np.int64]

    @property
    def n_classes(self) -> int:
        return int(self.y.max()) + 1

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])


def load_builtin(name: str) -> Dataset:
    """Load one of :data:`BUILTIN_DATASETS` from scikit-learn (no network)."""
    from sklearn import datasets

    loaders = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
    }
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}")
    bunch = loaders[name]()
    return Dataset(
        name=name,
        X=np.asarray(bunch.data, dtype=np.float64),
        y=np.asarray(bunch.target, dtype=np.int64),
    )


def random_split(n: int, n_train: int, *, seed: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """A uniformly random split of range(n) into n_train training and n - n_train test indices.

    Drawn with ``torch.randperm`` from a generator seeded with ``seed`` (the run's data seed);
    both index arrays are sorted.
    """
    if not 0 < n_train < n:
        raise ValueError(f"n_train must be in 1..{n - 1} for {n} points, got {n_train}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(perm[:n_train]).astype(np.int64), np.sort(perm[n_train:]).astype(np.int64)


def standardise(X: NDArray[np.float64], train: NDArray[np.int64]) -> NDArray[np.float64]:
    """z-score every column with the training rows' mean and (population) std.

    Columns constant on the training rows are only centred (their std is taken as 1), so
    no division by zero happens (digits has such pixels).
    """
    mean = X[train].mean(axis=0)
    std = X[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (X - mean) / std
