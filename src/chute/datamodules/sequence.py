"""``SequenceDataModule``: variable-length token or character sequences with a class label."""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
from typing_extensions import Unpack

from chute.datamodules.base import ChuteDataModule, CommonArgs
from chute.datasets.folder_index import stratified_split
from chute.datasets.sequence import (
    CharVocab,
    PackedSequences,
    RawRecords,
    SequenceDataset,
    collate_sequences,
    keep_in_range,
    padding_waste,
    read_jsonl,
)
from chute.errors import ConfigError, DataError
from chute.loader import Loader, Stream, derive_seed
from chute.loader.orders import BucketBatchSampler


class SequenceDataModule(ChuteDataModule):
    """JSONL sequences as padded dict batches: ``inputs (B, T)``, ``lengths``, ``mask``, ``targets``.

    Each line of ``root/<train_file>`` (and ``<val_file>``, optional ``<test_file>``) is
    ``{"tokens": [ids...], "label": k}`` or ``{"text": "...", "label": k}``; text is mapped to ids
    through a character vocabulary built on the training split only (0 = padding, 1 = unseen).
    Batches pad to their own longest sequence; with ``bucket`` (default) a
    :class:`~chute.loader.orders.BucketBatchSampler` groups similar lengths so little padding remains.
    Prediction keeps the file order (no bucketing), so outputs line up with the input lines.

    Args:
        root: Folder holding the JSONL files.
        train_file: Training file name.
        val_file: Validation file name; if it does not exist, ``val_fraction`` of the training file
            is held out (stratified, seeded).
        test_file: Test file name (default: test and predict use the validation split).
        val_fraction: Share held out when there is no validation file.
        label_key: Name of the label field.
        vocab_size: Token-id vocabulary size (``None``: largest training id + 1); ignored for text.
        pad_id: Id used for padding (text: always 0); token ids must not use it (an error names the
            line that does). An inferred vocabulary holds it.
        max_length: Cut longer sequences to this length (``None``: keep whole).
        bucket: Batch sequences of similar length (training shuffles the buckets; evaluation sorts).
        pool_batches: Batches per bucketing pool (larger: less padding, less randomness).
        min_char_count: Characters seen fewer times in training map to the unseen id.
        loader: DataLoader settings.
        seed: Seed for the split, shuffling and worker seeding.
        prepare: Optional callable ``prepare(root)`` that writes the files if missing.
        collate_fn: Collate function or dotted path (default: pad to the batch's longest, with mask).
        imbalance: Class-imbalance strategy; a sampling strategy replaces length bucketing for training.
        on_error: A bad line (what :func:`~chute.datasets.sequence.read_jsonl` rejects, a token id
            ``>= vocab_size``, a label that is not a training class): ``raise`` names the file, the line
            and the reason; ``skip`` drops the line at setup, before the split, the vocabulary and the
            class count see it, counts it (``bad_samples``) and logs the count and first lines once.
        max_bad_fraction: With ``skip``, raise when more than this share of a file's record lines is
            bad (for files of fewer than 100 lines, more than ``max_bad_fraction * 100`` lines).

    Example:
        >>> from chute.datasets import LengthMajoritySequences
        >>> import tempfile
        >>> dm = SequenceDataModule(tempfile.mkdtemp() + "/seq", prepare=LengthMajoritySequences(200, 50))
        >>> dm.prepare_data(); dm.setup("fit")
        >>> batches = list(dm.train_dataloader())  # batches of similar lengths, in a seeded order
        >>> sorted(batches[0]), sum(len(b["targets"]) for b in batches), dm.num_classes
        (['inputs', 'lengths', 'mask', 'targets'], 200, 4)
    """

    sample_collate: str | None = "chute.datasets.sequence.collate_sequences"  # for streams of its samples

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        train_file: str = "train.jsonl",
        val_file: str = "val.jsonl",
        test_file: str = "test.jsonl",
        val_fraction: float = 0.2,
        label_key: str = "label",
        vocab_size: int | None = None,
        pad_id: int = 0,
        max_length: int | None = None,
        bucket: bool = True,
        pool_batches: int = 50,
        min_char_count: int = 1,
        **common: Unpack[CommonArgs],
    ) -> None:
        super().__init__(**common)
        if max_length is not None and max_length < 1:
            raise ConfigError("max_length", max_length, "must be >= 1 or null (no limit)")
        if vocab_size is not None and vocab_size < 2:
            raise ConfigError("vocab_size", vocab_size, "must be >= 2 or null (inferred from the training data)")
        if pad_id < 0 or (vocab_size is not None and pad_id >= vocab_size):
            ids = f"0..{vocab_size - 1}" if vocab_size is not None else "an id >= 0"
            raise ConfigError(
                "pad_id", pad_id, f"must be a token id of the vocabulary ({ids}); an unused one, as the model "
                "fixes its embedding at zero",
            )  # fmt: skip
        if pool_batches < 1:
            raise ConfigError("pool_batches", pool_batches, "must be >= 1")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError("val_fraction", val_fraction, "must be in (0, 1)")
        self.root = os.fspath(root)
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.val_fraction = val_fraction
        self.label_key = label_key
        self.pad_id = pad_id
        self.max_length = max_length
        self.bucket = bucket
        self.pool_batches = pool_batches
        self.min_char_count = min_char_count
        self._given_vocab_size = vocab_size
        self._vocab_size = vocab_size
        self.vocab: CharVocab | None = None
        self._num_classes: int | None = None
        self._saved: dict[str, Any] | None = None
        self._datasets: dict[str, SequenceDataset] = {}
        self.save_plain_hyperparameters()

    # -- Lightning hooks -------------------------------------------------------------------------

    def prepare_data(self) -> None:
        self.run_prepare(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        # What is known before reading (the vocab_size argument, a checkpoint's) checks the training
        # file before the split; what is fitted on the training split then checks val and test.
        self.vocab, self._vocab_size, self._num_classes = None, self._given_vocab_size, None
        if self._saved is not None:
            chars = self._saved.get("chars")
            self.vocab = CharVocab(chars) if chars is not None else None
            self._vocab_size = int(self._saved["vocab_size"])
            self._num_classes = int(self._saved["num_classes"])
        raw = self._read_splits()
        train = raw["train"]
        if self._saved is None:
            if train.texts is not None:
                self.vocab = CharVocab.build(train.texts, self.min_char_count)
            else:
                if self._vocab_size is None:  # one that holds the padding id too
                    self._vocab_size = max(_inferred_vocab_size(train), self.pad_id + 1)
                _check_padding_unused(train, self.pad_id)
            self._num_classes = int(train.labels.max()) + 1
        if self.vocab is not None:
            self._vocab_size = len(self.vocab)
        checked = {id(train): train}  # without a test file, test is the val split: check it once
        for split in ("val", "test"):
            if id(raw[split]) not in checked:
                checked[id(raw[split])] = self._in_range(raw[split], split)
            raw[split] = checked[id(raw[split])]
        for split, bad in self._bad.items():
            bad.report(f"'{os.path.join(self.root, self.files[split])}'")
        self._datasets = {name: SequenceDataset(self._pack(records), self.max_length) for name, records in raw.items()}
        self.check_imbalance()

    def predict_dataloader(self) -> Loader:
        return self.split_dataloader("test", train=False, keep_order=True)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._num_classes is not None:
            state.update(
                vocab_size=self.vocab_size, num_classes=self._num_classes,
                chars=list(self.vocab.chars) if self.vocab is not None else None,
            )  # fmt: skip
        elif self._saved is not None:
            state.update(self._saved)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Reuse a checkpoint's vocabulary, class count and seed. Lightning calls this after ``setup``
        when it resumes: what setup made (the held-out split, cut with this run's seed; a vocabulary
        built from the files as they are now) is made again from the checkpoint's."""
        drawn = self._seed
        saved = ("vocab_size", "num_classes", "chars")
        made = {k: v for k, v in self.state_dict().items() if k in saved} if self._datasets else None
        super().load_state_dict(state_dict)
        if "num_classes" in state_dict:
            self._saved = {k: state_dict[k] for k in saved}
        if made is not None and (self._seed != drawn or (self._saved is not None and self._saved != made)):
            self._datasets = {}
            self.setup("fit")

    # -- Public properties -----------------------------------------------------------------------

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "num_classes": self.num_classes, "pad_id": self.padding_id}

    @property
    def vocab_size(self) -> int:
        self._ready()
        assert self._vocab_size is not None
        return self._vocab_size

    @property
    def num_classes(self) -> int:
        self._ready()
        assert self._num_classes is not None
        return self._num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(self.num_classes))

    @property
    def padding_id(self) -> int:
        return CharVocab.PAD if self.vocab is not None else self.pad_id

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.dataset("train").packed.labels, minlength=self.num_classes)

    def dataset(self, split: str) -> SequenceDataset:
        self._ready()
        return self._datasets[split]

    def padding_waste(self, split: str = "train", bucket: bool | None = None) -> float:
        """Pad tokens / real tokens over one epoch of ``split``'s batches (``bucket`` overrides the setting)."""
        dataset = self.dataset(split)
        use = self.bucket if bucket is None else bucket
        batches = self._batch_sampler(dataset, train=split == "train", bucket=use)
        if batches is None:
            size = self.loader_settings.batch_size_for(split == "train")
            order = np.random.default_rng(derive_seed(self.seed, Stream.REPORT)).permutation(len(dataset))
            return padding_waste(dataset.lengths, [order[i : i + size] for i in range(0, len(order), size)])
        return padding_waste(dataset.lengths, [b.tolist() for b in batches.batches()])

    # -- Internals -------------------------------------------------------------------------------

    def _ready(self) -> None:
        if not self._datasets:
            raise self.not_set_up_error()

    def split_dataloader(self, split: str, train: bool, keep_order: bool = False) -> Loader:
        dataset = self.dataset(split)
        collate = self.collate_or(functools.partial(collate_sequences, pad_id=self.padding_id))
        if train:  # an imbalance strategy decides the training order instead of buckets
            batches = None if self.imbalance.samples else self._batch_sampler(dataset, train, self.bucket)
            return self.build_dataloader(dataset, train=True, collate_fn=collate, batches=batches)
        # Evaluation in length order (little padding), or in file order for predict.
        order = None if keep_order or not self.bucket else np.argsort(dataset.lengths, kind="stable")
        return self.build_dataloader(dataset, train=False, collate_fn=collate, eval_order=order)

    def class_labels(self) -> tuple[np.ndarray, int, tuple[str, ...]]:
        return self.dataset("train").packed.labels, self.num_classes, self.class_names

    def _batch_sampler(self, dataset: SequenceDataset, train: bool, bucket: bool) -> BucketBatchSampler | None:
        if not bucket:
            return None
        settings = self.loader_settings
        return BucketBatchSampler(
            dataset.lengths,
            settings.batch_size_for(train),
            shuffle=train and settings.shuffle,
            drop_last=train and settings.drop_last,
            pool_batches=self.pool_batches,
            seed=derive_seed(self.seed, Stream.BUCKETS),
            pad=train,  # evaluation: every sample exactly once across ranks
        )

    def _read_splits(self) -> dict[str, RawRecords]:
        if not os.path.isdir(self.root):
            raise DataError(f"Sequence root '{self.root}' does not exist or is not a directory.")
        paths = {k: os.path.join(self.root, f) for k, f in self.files.items()}
        self._bad = {}
        train = self._in_range(self._read(paths["train"], "train"), "train")
        if os.path.isfile(paths["val"]):
            val = self._read(paths["val"], "val")
        else:  # split the kept lines only
            keep, held = stratified_split(train.labels, self.val_fraction, derive_seed(self.seed, Stream.SPLIT))
            train, val = train.take(keep), train.take(held)
        test = self._read(paths["test"], "test") if os.path.isfile(paths["test"]) else val
        for records in (val, test):
            if (records.texts is None) != (train.texts is None):
                raise DataError(f"'{records.source}' and the training file mix 'text' and 'tokens' records.")
        return {"train": train, "val": val, "test": test}

    def _read(self, path: str, split: str) -> RawRecords:
        """The JSONL file of ``split``; bad lines raise or, with ``skip``, are dropped and counted."""
        return read_jsonl(path, self.label_key, self.bad_policy(split, "line", fresh=True))

    def _in_range(self, records: RawRecords, split: str) -> RawRecords:
        """``records`` without token ids or labels beyond what is known so far, counted against their file.
        A held-out line holding the padding id is one of them; in the training file that id is an
        error of the configuration (:func:`_check_padding_unused`), not of a line."""
        owner = split if split in self._bad else "train"  # a held-out val split (test without a file is val)
        pad_id = None if split == "train" else self.pad_id
        return keep_in_range(records, self._vocab_size, self._num_classes, self._bad[owner], pad_id)

    def _pack(self, records: RawRecords) -> PackedSequences:
        if records.texts is not None:
            assert self.vocab is not None
            return PackedSequences.pack([self.vocab.encode(t) for t in records.texts], records.labels)
        assert records.tokens is not None
        return PackedSequences.pack(records.tokens, records.labels)


# An inferred vocabulary this large is an embedding table of gigabytes (16.8 M ids x 64 floats: 4 GB):
# a stray id (hashed, or a typo) rather than a vocabulary, said rather than allocated.
_MOST_INFERRED_IDS = 1 << 24


def _check_padding_unused(train: RawRecords, pad_id: int) -> None:
    """A token id equal to ``pad_id`` is an error naming its line: batches would hold it right (the
    mask follows lengths), but the model's embedding of the padding id stays zero (``padding_idx``),
    so the token would never be learned."""
    for at, tokens in enumerate(train.tokens or []):
        if pad_id in tokens:
            raise DataError(
                f"Token id {pad_id} at {train.where(at)} is the padding id (pad_id={pad_id}): the model keeps the "
                "padding's embedding at zero and would never learn the token. Set data.pad_id to an id no token "
                "uses (the vocabulary grows to hold it), or shift the ids so that 0 is free."
            )


def _inferred_vocab_size(train: RawRecords) -> int:
    """The largest training token id + 1, unless that id is implausibly large for an inferred
    vocabulary: then an error naming its line (``vocab_size`` given says how large it really is)."""
    highest = [max(tokens) for tokens in train.tokens or [[0]]]
    at = int(np.argmax(highest))
    if highest[at] >= _MOST_INFERRED_IDS:
        raise DataError(
            f"Token id {highest[at]} at {train.where(at)} would make the inferred vocabulary {highest[at] + 1:,} "
            "ids (the largest training id + 1), an embedding table of gigabytes. Map hashed or sparse ids to "
            "0..N-1 first; if the vocabulary really is this large, set data.vocab_size."
        )
    return int(highest[at]) + 1
