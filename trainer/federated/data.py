"""The bundled dataset split IID across federated clients, in code.

Every client gets an equal-sized random share of the train split and of the validation
split (its local training and evaluation data); the test split stays with the server for
central evaluation of the global model. The split is a pure function of the seed, so
every process (server, each client, each round) computes the same partitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from trainer.data import BreastCancerSplits, Split, load_splits
from trainer.defaults import DEFAULT_SEED

_SPLITS_CACHE: dict[int, BreastCancerSplits] = {}


def dataset_splits(seed: int = DEFAULT_SEED) -> BreastCancerSplits:
    """The standardised train/val/test splits (loaded once per process)."""
    splits = _SPLITS_CACHE.get(seed)
    if splits is None:
        splits = _SPLITS_CACHE[seed] = load_splits(seed=seed)
    return splits


def iid_shard(split: Split, partition_id: int, num_partitions: int, seed: int) -> Split:
    """Partition ``partition_id`` of ``num_partitions`` equal random shares of ``split``."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be at least 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    if len(split) < num_partitions:
        raise ValueError(f"{len(split)} examples cannot be shared by {num_partitions} clients")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    indices = torch.tensor_split(order, num_partitions)[partition_id]
    return Split(split.features[indices], split.labels[indices])


@dataclass(frozen=True)
class ClientData:
    """One client's local data: a share of the train split and of the validation split."""

    train: Split
    val: Split
    num_features: int

    def train_loader(self, batch_size: int, seed: int) -> DataLoader[tuple[torch.Tensor, ...]]:
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            self.train.dataset(), batch_size=batch_size, shuffle=True, generator=generator
        )

    def val_loader(self, batch_size: int) -> DataLoader[tuple[torch.Tensor, ...]]:
        return DataLoader(self.val.dataset(), batch_size=batch_size)


def client_data(partition_id: int, num_partitions: int, seed: int = DEFAULT_SEED) -> ClientData:
    splits = dataset_splits(seed)
    return ClientData(
        train=iid_shard(splits.train, partition_id, num_partitions, seed),
        val=iid_shard(splits.val, partition_id, num_partitions, seed + 1),
        num_features=splits.num_features,
    )


def central_test_loader(
    batch_size: int, seed: int = DEFAULT_SEED
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """The held-out test split the server evaluates the global model on."""
    return DataLoader(dataset_splits(seed).test.dataset(), batch_size=batch_size)
