"""The bundled breast-cancer data: fixed-seed stratified splits, standardised on train."""

from __future__ import annotations

import torch

from trainer.data import BreastCancerDataModule, load_splits


def test_splits_are_disjoint_sized_and_stratified() -> None:
    splits = load_splits(seed=42)
    sizes = (len(splits.train), len(splits.val), len(splits.test))
    assert sum(sizes) == 569 and sizes == (341, 114, 114)
    assert splits.num_features == 30
    rates = [float(s.labels.mean()) for s in (splits.train, splits.val, splits.test)]
    assert max(rates) - min(rates) < 0.02  # stratified: ~37% malignant everywhere
    assert abs(rates[0] - 212 / 569) < 0.01  # malignant is the positive class


def test_standardised_on_train_statistics() -> None:
    splits = load_splits(seed=42)
    assert torch.allclose(splits.train.features.mean(0), torch.zeros(30), atol=1e-4)
    assert torch.allclose(splits.train.features.std(0, unbiased=False), torch.ones(30), atol=1e-3)
    assert not torch.allclose(splits.val.features.mean(0), torch.zeros(30), atol=1e-4)


def test_same_seed_same_split_other_seed_other_split() -> None:
    a, b, c = load_splits(seed=1), load_splits(seed=1), load_splits(seed=2)
    assert torch.equal(a.train.features, b.train.features)
    assert not torch.equal(a.train.features, c.train.features)


def test_datamodule_batches() -> None:
    data = BreastCancerDataModule(batch_size=16, seed=3)
    data.setup("fit")
    features, labels = next(iter(data.train_dataloader()))
    assert features.shape == (16, 30) and features.dtype == torch.float32
    assert labels.shape == (16,) and set(labels.tolist()) <= {0.0, 1.0}
    assert len(data.val_dataloader()) == 8 and len(data.test_dataloader()) == 8
    assert data.num_features == 30
