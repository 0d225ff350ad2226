"""SequenceDataModule: JSONL reading, padding collate with mask, length bucketing, vocabularies, errors.

Bad lines (each kind, raise and skip) are tested in tests/test_bad_samples_sequence.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from chute.datamodules import SequenceDataModule
from chute.datasets import LengthMajoritySequences, collate_sequences
from chute.errors import ConfigError, DataError
from chute.loader.orders import BucketBatchSampler
from tests.datamodules.contract import check_datamodule


@pytest.fixture(scope="module")
def seq_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(LengthMajoritySequences(num_train=600, num_val=200)(tmp_path_factory.mktemp("seq") / "lm"))


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_contract(seq_root: str) -> None:
    def make() -> SequenceDataModule:
        return SequenceDataModule(seq_root, loader={"batch_size": 16})

    dm = check_datamodule(make, batch_size=16, cpu_dtype=torch.int64)
    assert dm.model_kwargs == {"vocab_size": 16, "num_classes": 4, "pad_id": 0}
    assert dm.class_counts.sum() == 600


def test_batches_pad_to_their_longest_sequence_with_mask_and_lengths(seq_root: str) -> None:
    dm = SequenceDataModule(seq_root, bucket=False, loader={"batch_size": 8})
    dm.setup("fit")
    for batch in list(dm.train_dataloader())[:5]:
        inputs, lengths, mask = batch["inputs"], batch["lengths"], batch["mask"]
        assert inputs.shape[1] == int(lengths.max())
        assert torch.equal(mask.sum(dim=1), lengths)
        assert (inputs[~mask] == 0).all()
        assert (inputs[mask] > 0).all()  # the default data uses ids >= 1


def test_every_sequence_once_per_epoch_with_bucketing(seq_root: str) -> None:
    dm = SequenceDataModule(seq_root, loader={"batch_size": 32})
    dm.setup("fit")
    loader = dm.train_dataloader()
    sampler = loader.sampler
    assert isinstance(sampler, BucketBatchSampler)
    epochs = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        seen = np.concatenate(sampler.batches())
        assert sorted(seen.tolist()) == list(range(600))
        epochs.append(seen)
        assert len(list(loader)) == len(sampler) == 19
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch


def test_bucketing_cuts_padding_below_ten_percent_on_the_default_data(seq_root: str) -> None:
    dm = SequenceDataModule(seq_root, loader={"batch_size": 64})
    dm.setup("fit")
    without, with_buckets = dm.padding_waste("train", bucket=False), dm.padding_waste("train", bucket=True)
    assert without > 0.5
    assert with_buckets < 0.10


def test_bucket_sampler_is_seeded_and_drop_last_keeps_full_batches() -> None:
    lengths = np.random.default_rng(0).integers(1, 50, 103)
    a = BucketBatchSampler(lengths, 10, seed=3).batches()
    b = BucketBatchSampler(lengths, 10, seed=3).batches()
    c = BucketBatchSampler(lengths, 10, seed=4).batches()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert sum(len(x) < 10 for x in a) == 1
    dropped = BucketBatchSampler(lengths, 10, drop_last=True).batches()
    assert len(dropped) == 10
    assert all(len(x) == 10 for x in dropped)


def test_text_records_use_a_character_vocabulary_built_on_train_only(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"text": "abc", "label": 0}, {"text": "cab", "label": 1}])
    write_jsonl(tmp_path / "val.jsonl", [{"text": "abz", "label": 1}])
    dm = SequenceDataModule(tmp_path, loader={"batch_size": 2})
    dm.setup("fit")
    assert dm.vocab is not None
    assert dm.vocab.chars == ["a", "b", "c"]
    batch = next(iter(dm.val_dataloader()))
    assert batch["inputs"].tolist() == [[2, 3, 1]]  # 'z' never seen in training -> unknown id 1
    restored = SequenceDataModule(tmp_path)
    restored.load_state_dict(dm.state_dict())
    restored.setup("fit")
    assert restored.state_dict() == dm.state_dict()


def test_val_fraction_when_there_is_no_val_file(tmp_path: Path) -> None:
    records = [{"tokens": [1 + i % 5] * (1 + i % 7), "label": i % 2} for i in range(40)]
    write_jsonl(tmp_path / "train.jsonl", records)
    dm = SequenceDataModule(tmp_path, val_fraction=0.25)
    dm.setup("fit")
    assert len(dm.dataset("val")) == 10
    assert len(dm.dataset("train")) == 30


def test_max_length_truncates_and_pad_id_fills(seq_root: str) -> None:
    dm = SequenceDataModule(seq_root, max_length=10, bucket=False)
    dm.setup("fit")
    assert max(len(b["inputs"][0]) for b in dm.train_dataloader()) == 10
    batch = collate_sequences(
        [{"inputs": torch.arange(1, 4), "targets": 0}, {"inputs": torch.tensor([1]), "targets": 1}], 9
    )
    assert batch["inputs"].tolist() == [[1, 2, 3], [1, 9, 9]]


def test_missing_root_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        SequenceDataModule(tmp_path / "nowhere").setup("fit")
    (tmp_path / "train.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        SequenceDataModule(tmp_path).setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"max_length": 0}, "max_length"), ({"vocab_size": 1}, "vocab_size"), ({"pool_batches": 0}, "pool_batches")],
)
def test_bad_settings_name_the_key(tmp_path: Path, kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SequenceDataModule(tmp_path, **kwargs)
    assert info.value.key == key


def test_one_huge_token_id_is_named_not_made_a_vocabulary(tmp_path: Path) -> None:
    """One id of 10**12 made the inferred vocabulary 10**12 + 1 ids: the model then asked for 128 TB
    (a raw allocator error under Hydra's 'Error in call to target'). Named by line; a large
    vocabulary given as ``vocab_size`` is the user's to have."""
    records = [{"tokens": [1, 2, 3], "label": i % 2} for i in range(20)]
    records[2] = {"tokens": [4, 10**12], "label": 0}
    write_jsonl(tmp_path / "train.jsonl", records)
    write_jsonl(tmp_path / "val.jsonl", [{"tokens": [1, 2], "label": 0}, {"tokens": [3], "label": 1}])
    with pytest.raises(DataError, match=r"Token id 1000000000000 at '.*train\.jsonl', line 3 would make the inferred"):
        SequenceDataModule(tmp_path).setup("fit")
    records[2] = {"tokens": [4, 40_000], "label": 0}  # a vocabulary of tens of thousands: fine
    write_jsonl(tmp_path / "train.jsonl", records)
    dm = SequenceDataModule(tmp_path)
    dm.setup("fit")
    assert dm.vocab_size == 40_001


def test_a_token_id_equal_to_the_padding_id_is_named(tmp_path: Path) -> None:
    """Token 0 in the data with the default ``pad_id=0``: the batches were right, but the model's
    embedding of the padding id is fixed at zero, so that token was never learned, silently."""
    from chute.models import SequenceClassifier

    records = [{"tokens": [1, 2, 3], "label": i % 2} for i in range(20)]
    records[4] = {"tokens": [5, 0, 3], "label": 0}
    write_jsonl(tmp_path / "train.jsonl", records)
    write_jsonl(tmp_path / "val.jsonl", [{"tokens": [1, 2], "label": 0}, {"tokens": [0, 3], "label": 1}])
    with pytest.raises(DataError, match=r"Token id 0 at '.*train\.jsonl', line 5 is the padding id \(pad_id=0\)"):
        SequenceDataModule(tmp_path).setup("fit")
    dm = SequenceDataModule(tmp_path, pad_id=6, loader={"batch_size": 4})  # an unused id: the vocabulary holds it
    dm.setup("fit")
    assert dm.model_kwargs == {"vocab_size": 7, "num_classes": 2, "pad_id": 6}
    model = SequenceClassifier(**dm.model_kwargs)
    batch = next(iter(dm.train_dataloader()))
    assert model(batch).shape == (4, 2)
    with pytest.raises(ConfigError, match=r"^pad_id=9: must be a token id of the vocabulary \(0\.\.7\)"):
        SequenceDataModule(tmp_path, pad_id=9, vocab_size=8)


def test_a_held_out_token_equal_to_the_padding_id_is_a_bad_line(tmp_path: Path) -> None:
    """The model never learns the padding id as a token, so a validation line holding it is judged
    as one beyond the vocabulary: named, or skipped and counted (it was evaluated as padding)."""
    write_jsonl(tmp_path / "train.jsonl", [{"tokens": [1, 2, 3], "label": i % 2} for i in range(20)])
    write_jsonl(tmp_path / "val.jsonl", [{"tokens": [1, 2], "label": 0}, {"tokens": [3, 0], "label": 1}])
    with pytest.raises(DataError, match=r"val\.jsonl', line 2: token id 0 is the padding id \(pad_id=0\)"):
        SequenceDataModule(tmp_path).setup("fit")
    dm = SequenceDataModule(tmp_path, on_error="skip")
    dm.setup("fit")
    assert len(dm.val_dataloader().dataset) == 1
