"""The bundled demo dataset: scikit-learn's breast-cancer data as a LightningDataModule.

A binary screening task, like pneumonia detection (1 = malignant here is remapped so that the
positive class is the one a screening model must not miss); recall matters most.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer.defaults import DEFAULT_SEED


@dataclass(frozen=True)
class Split:
    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.features, self.labels)


@dataclass(frozen=True)
class BreastCancerSplits:
    train: Split
    val: Split
    test: Split
    num_features: int


def load_splits(
    *, seed: int = DEFAULT_SEED, val_fraction: float = 0.2, test_fraction: float = 0.2
) -> BreastCancerSplits:
    """Stratified train/val/test split with a fixed seed, standardised on train statistics."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    features, labels = load_breast_cancer(return_X_y=True)
    # sklearn codes malignant as 0; make malignant the positive class (what recall is about).
    positive = (labels == 0).astype(np.float32)
    x_rest, x_test, y_rest, y_test = train_test_split(
        features, positive, test_size=test_fraction, random_state=seed, stratify=positive
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=val_fraction / (1.0 - test_fraction),
        random_state=seed,
        stratify=y_rest,
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0) + 1e-8

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        scaled = ((x - mean) / std).astype(np.float32)
        return Split(torch.from_numpy(scaled), torch.from_numpy(y.astype(np.float32)))

    return BreastCancerSplits(
        train=split(x_train, y_train),
        val=split(x_val, y_val),
        test=split(x_test, y_test),
        num_features=int(features.shape[1]),
    )


class BreastCancerDataModule(pl.LightningDataModule):
    """Standardised breast-cancer features; labels are float (1.0 = malignant)."""

    def __init__(self, batch_size: int = 32, seed: int = DEFAULT_SEED) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.seed = seed
        self._splits: BreastCancerSplits | None = None

    @property
    def splits(self) -> BreastCancerSplits:
        if self._splits is None:
            self._splits = load_splits(seed=self.seed)
        return self._splits

    @property
    def num_features(self) -> int:
        return self.splits.num_features

    def setup(self, stage: str | None = None) -> None:
        _ = self.splits

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.splits.train.dataset(),
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
        )

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        return DataLoader(self.splits.val.dataset(), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        return DataLoader(self.splits.test.dataset(), batch_size=self.batch_size)
