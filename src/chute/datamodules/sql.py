"""``SqlDataModule``: features and a target from a SQL table or query, SQLite or PostgreSQL, read by key."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import Unpack

from chute.bad_samples import BadSamples
from chute.collate import passthrough
from chute.datamodules.base import CommonArgs
from chute.datamodules.table import FittedEncoding, Task, UnknownCategory, infer_numeric
from chute.datasets.database import Database, batch_rows, redact
from chute.datasets.sql import Encoding, SqlRows, readable_rows, without_blobs
from chute.datasets.sql_source import SqlSource, check_names, fetch_split, key_split
from chute.datasets.tabular import MissingStrategy, TableEncoder, label_classes
from chute.errors import ConfigError, DataError
from chute.loader import Loader, Stream, derive_seed
from chute.loader.distributed import from_rank_zero
from chute.loader.key_orders import KeyBatches, KeyOrder, KeyRanges, KeyStream

Snapshot = Literal["epoch", "once"]
Index = Literal["memory", "stream"]


class SqlDataModule(FittedEncoding):
    """Rows of a SQL table (or ``SELECT``) as ``(features, targets)`` batches, read a batch per query.

    The source needs a unique integer key column (``key``). Each epoch reads a *snapshot*: the keys
    of the rows committed when the epoch began, read once (on rank 0, shared with the other ranks)
    and kept in memory (8 bytes a row; ``index="stream"`` keeps key ranges instead, below). Rows
    inserted during an epoch join the next one; a row deleted during an epoch is an error naming it
    (``on_error=skip``: left out and counted). Under a Trainer the loaders are made again each epoch
    to take the new snapshot's length (``reload_dataloaders_every_n_epochs=1`` is set for you when
    it is not; ``snapshot="once"`` reads the keys once per run instead).

    With ``index="stream"`` (tables whose key index does not fit in memory) the snapshot is a list
    of key ranges of ``shuffle_buffer / 16`` rows each (at least a batch) with their row counts, read in one
    streamed scan of the key column; training takes the ranges in a seeded order and shuffles
    within a buffer of ``shuffle_buffer`` keys (:class:`~chute.loader.key_orders.KeyStream`). Memory is
    the ranges and the buffer, whatever the table's size; the guarantees are the same (each row
    once, equal steps, seeded, resumable), provided rows arrive with growing keys: a range that
    loses rows, or gains rows below the snapshot's largest key, while an epoch runs is an error
    (``on_error=skip``: the difference is counted as skipped rows, and the epoch goes on). The
    shuffle is local: a batch mixes rows from about 16 ranges, not from the whole table.

    Every epoch delivers each row of its snapshot exactly once across ranks and workers (training
    pads each rank's share with fewer than ``world_size`` repeated rows, so ranks take equal steps;
    evaluation counts every row once), in an order drawn from ``(seed, epoch)``, and a checkpoint
    saved mid-epoch resumes after the batches already trained on. Columns are encoded exactly as
    :class:`TabularDataModule` encodes them (:class:`~chute.datasets.tabular.TableEncoder`), with
    statistics fitted on the training rows at ``setup``.

    Args:
        url: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``postgresql://user@host:port/db``
            (libpq's URI: ``?host=/socket/dir`` for a Unix socket). Keep passwords in ``PGPASSWORD``
            or ``~/.pgpass``; a password in the URL is never shown (``***`` in logs, errors, hparams).
        table: A table name, or a ``SELECT``/``WITH`` query whose result has the key column.
        target: The target column.
        key: The unique integer key column (e.g. an ``id`` primary key).
        numeric: Numeric feature columns (``None``: every numeric column but key and target).
        categorical: Categorical feature columns (one-hot over the training rows' values).
        task: ``classification`` or ``regression``.
        val_table: Table or query for validation; without it, ``val_fraction`` of ``table``'s rows
            are held out by a seeded hash of their key (a row's split never changes, and rows that
            arrive later split in the same proportion).
        test_table: Table or query for test and predict (default: the validation rows).
        val_fraction: Share held out when there is no ``val_table``.
        missing, fill_value, standardize, unknown_category: As for :class:`TabularDataModule`.
        snapshot: ``epoch`` (each epoch reads the rows committed when it began) or ``once``.
        index: ``memory`` (the snapshot's keys, 8 bytes a row: a shuffle over the whole table) or
            ``stream`` (key ranges and a shuffle buffer: any table size).
        shuffle_block: Rows kept together by the training shuffle (``None``: ``batch_size // 64``, so a
            batch is read as 64 key ranges from all over the table; 1: every row on its own).
        shuffle_buffer: With ``index="stream"``: keys held by the training shuffle on each rank.
        fit_rows: Training rows the encoding is fitted on (a seeded sample when there are more).
        retries: A lost connection is retried this many times (waits ``retry_wait`` s, doubling).
        retry_wait: The first wait, in seconds.
        loader, seed, prepare, collate_fn, imbalance, on_error, max_bad_fraction: As for every
            DataModule (:class:`ChuteDataModule`); ``prepare(url)`` writes the database if missing.
            Imbalance strategies that draw samples by label are refused (the labels live in the
            database); ``loss_weights`` works.

    Example:
        >>> import tempfile
        >>> from chute.datasets import SklearnSqlite
        >>> url = "sqlite:///" + tempfile.mkdtemp() + "/wine.db"
        >>> dm = SqlDataModule(url, table="wine", target="cultivar", prepare=SklearnSqlite("wine"))
        >>> dm.prepare_data(); dm.setup("fit")
        >>> dm.num_features, dm.class_names
        (13, ('class_0', 'class_1', 'class_2'))
        >>> features, targets = next(iter(dm.train_dataloader()))
        >>> features.dtype, tuple(features.shape), targets.dtype
        (torch.float32, (64, 13), torch.int64)
    """

    def __init__(
        self,
        url: str,
        *,
        table: str,
        target: str,
        key: str = "id",
        numeric: Sequence[str] | None = None,
        categorical: Sequence[str] = (),
        task: Task = "classification",
        val_table: str | None = None,
        test_table: str | None = None,
        val_fraction: float = 0.2,
        missing: MissingStrategy = "raise",
        fill_value: float = 0.0,
        standardize: bool = True,
        unknown_category: UnknownCategory = "raise",
        snapshot: Snapshot = "epoch",
        index: Index = "memory",
        shuffle_block: int | None = None,
        shuffle_buffer: int = 131_072,
        fit_rows: int = 200_000,
        retries: int = 3,
        retry_wait: float = 0.5,
        **common: Unpack[CommonArgs],
    ) -> None:
        super().__init__(
            numeric=numeric, categorical=categorical, missing=missing, fill_value=fill_value, standardize=standardize,
            unknown_category=unknown_category, **common,
        )  # fmt: skip
        self.database = Database(url, retries=retries, retry_wait=retry_wait)
        self.sources = {
            "train": SqlSource(self.database, table, key),
            "val": SqlSource(self.database, val_table or table, key),
            "test": SqlSource(self.database, test_table or val_table or table, key),
        }
        self.held_out = val_table is None
        if self.held_out and not 0.0 < val_fraction < 1.0:
            raise ConfigError("val_fraction", val_fraction, "must be in (0, 1) when there is no val_table")
        if task not in ("classification", "regression"):
            raise ConfigError("task", task, "must be 'classification' or 'regression'")
        if snapshot not in ("epoch", "once"):
            raise ConfigError("snapshot", snapshot, "must be 'epoch' (each epoch reads new rows) or 'once'")
        if index not in ("memory", "stream"):
            raise ConfigError("index", index, "must be 'memory' (the keys in memory) or 'stream' (key ranges)")
        if shuffle_buffer < 0:
            raise ConfigError("shuffle_buffer", shuffle_buffer, "must be >= 0 keys (0: no shuffle within ranges)")
        if shuffle_block is not None and shuffle_block < 1:
            raise ConfigError("shuffle_block", shuffle_block, "must be >= 1 (or null: batch_size // 64)")
        if fit_rows < 1:
            raise ConfigError("fit_rows", fit_rows, "must be >= 1")
        if target in (key, *categorical, *(numeric or ())):
            raise ConfigError("target", target, "is also the key or a feature column; a column cannot be both")
        if self.imbalance.samples:
            raise ConfigError(
                "imbalance.strategy", self.imbalance.strategy,
                "draws rows by label, and SqlDataModule reads rows by key; use loss_weights (or none)",
            )  # fmt: skip
        self.target, self.key, self.task = target, key, task
        self.val_fraction = val_fraction
        self.snapshot = snapshot
        self.index = index
        self.shuffle_block = shuffle_block
        self.shuffle_buffer = int(shuffle_buffer)
        self.fit_rows = int(fit_rows)
        self.encoding: Encoding | None = None
        self._fit_labels: np.ndarray | None = None
        self._once: dict[str, Any] = {}  # snapshot=once: each split's snapshot
        self.save_plain_hyperparameters(url=redact(url))

    # -- Lightning hooks -------------------------------------------------------------------------

    def prepare_data(self) -> None:
        self.run_prepare(self.database.url, "url", on_disk=self.database.path)

    def setup(self, stage: str | None = None) -> None:
        if self.encoding is not None:
            return
        columns = from_rank_zero(self._columns)
        widest = max(len(names) for names in columns.values()) + 1  # and the key, read again as chute_key
        settings = self.loader_settings
        self.database.batch_rows = batch_rows(widest, max(settings.batch_size, settings.eval_batch_size or 0))
        # Fitted on rank 0 and shared: every rank encodes alike and builds the same model, even if
        # rows change while the ranks start.
        numeric, state, classes, labels = from_rank_zero(lambda: self._fit(columns["train"]))
        for split in ("val", "test"):  # inferred from the training source: the others need them too
            check_names(self.sources[split], columns[split], {"numeric": numeric})
        encoder = TableEncoder(numeric=numeric, **self._encoder_args)  # type: ignore[arg-type]
        encoder.load_state_dict(state)  # rank 0's fit
        self.encoding = Encoding(encoder, self.target, self.task, tuple(classes))
        self._fit_labels = labels
        self.check_imbalance()

    def _columns(self) -> dict[str, list[str]]:
        """Each split's source columns, every column a setting names checked against them before any row
        is read: SQLite reads an unknown double-quoted name as a string literal (``"lable"`` is the text
        'lable' in every row), so a typo would otherwise be read as data."""
        named = {"key": [self.key], "target": [self.target], "numeric": self._numeric or [],
                 "categorical": self.categorical}  # fmt: skip
        read: dict[str, list[str]] = {}
        for source in self.sources.values():
            if source.relation not in read:
                read[source.relation] = source.columns().names
                check_names(source, read[source.relation], named)
        return {split: read[source.relation] for split, source in self.sources.items()}

    def _fit(self, names: list[str]) -> tuple[list[str], dict[str, Any], list[str], np.ndarray | None]:
        """The numeric columns, the fitted encoder's state, the classes and the fitted rows' labels
        (``names``: the training source's columns)."""
        source = self.sources["train"]
        if self.index == "stream":  # a sample drawn in the scan: the key index is never held
            keys = self._ranges("train", sample=self.fit_rows, shared=False).sample
        else:
            keys = self._keys("train", shared=False)
        if len(keys) == 0:
            raise DataError(f"{source.describe()} has no training rows.")
        if len(keys) > self.fit_rows:  # a seeded sample, in key order (one range scan per chunk)
            rng = np.random.default_rng(derive_seed(self.seed, Stream.SAMPLE))
            keys = np.sort(rng.choice(keys, self.fit_rows, replace=False))
        columns = self._numeric
        if columns is None:
            columns = [c for c in names if c not in (self.key, self.target, *self.categorical)]
        split = fetch_split(source, keys, [*columns, *self.categorical, self.target])
        named = (*(self._numeric or ()), *self.categorical, self.target)
        split = without_blobs(split, named, source.describe(), type(self).__name__)
        numeric = self._numeric
        if numeric is None:
            numeric = infer_numeric(split, {self.target}, self.categorical, type(self).__name__)
        if self.on_error == "skip":  # the bad rows are left out of the fit (the epochs count them when they meet them)
            split = readable_rows(split, numeric, self.target, allow_missing=self._encoder_args["missing"] != "raise")
        encoder, saved_classes = self._encoder(numeric)
        classes: list[str] = []
        if saved_classes is not None:
            classes = list(saved_classes)
        else:
            encoder.fit(split)
            if self.task == "classification":
                classes = label_classes(split, self.target)
        encoding = Encoding(encoder, self.target, self.task, tuple(classes))
        labels = encoding(split)[1] if self.task == "classification" else None
        return list(numeric), encoder.state_dict(), classes, labels

    # -- Public properties -----------------------------------------------------------------------

    @property
    def num_features(self) -> int:
        return len(self._encoding().encoder.feature_names)

    @property
    def feature_names(self) -> list[str]:
        return self._encoding().encoder.feature_names

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self._encoding().classes) if self.task == "classification" else 0

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.task != "classification":
            raise AttributeError("class_names: a regression task has no classes")
        return tuple(self._encoding().classes)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "num_classes": self.num_classes, "task": self.task}

    def class_labels(self) -> tuple[np.ndarray, int, tuple[str, ...]] | None:
        if self.task != "classification" or self._fit_labels is None:
            return None
        return self._fit_labels, self.num_classes, self.class_names

    def dataset(self, split: str) -> SqlRows:
        """The rows of ``train``, ``val`` or ``test`` (fetched by key; its length is the current snapshot's)."""
        return SqlRows(self.sources[split], self._encoding(), self.bad_policy(split, "row"))

    # -- Snapshots and loaders -------------------------------------------------------------------

    def _keys(self, split: str, upto: int | None = None, shared: bool = True, since: int | None = None) -> np.ndarray:
        """The keys of ``split`` committed now (``upto``/``since``: only keys up to / from it), the same on
        every rank (read on rank 0 and shared, unless ``shared`` is false: then this rank reads them itself)."""
        read = lambda: self.sources[split].keys(upto, since)  # noqa: E731
        keys = from_rank_zero(read) if shared else read()
        keep = self._keep(split)
        return keys if keep is None else keys[keep(keys)]

    def _ranges(self, split: str, upto: int | None = None, sample: int = 0, shared: bool = True) -> KeyRanges:
        """:meth:`_keys` as :class:`KeyRanges` (``index="stream"``), with a seeded ``sample`` of the keys."""
        per_range = max(self.shuffle_buffer // 16, self.loader_settings.batch_size)
        source, keep, seed = self.sources[split], self._keep(split), derive_seed(self.seed, Stream.SAMPLE)
        read = lambda: source.key_ranges(per_range, upto, keep, sample=sample, seed=seed)  # noqa: E731
        ranges: KeyRanges = from_rank_zero(read) if shared else read()
        return ranges

    def _keep(self, split: str) -> Callable[[np.ndarray], np.ndarray] | None:
        """Which of the source's keys belong to ``split`` (``None``: all): the seeded hold-out."""
        if not self.held_out or (split == "test" and self.sources["test"].relation != self.sources["train"].relation):
            return None
        fraction, seed = self.val_fraction, derive_seed(self.seed, Stream.SPLIT)
        if split == "train":
            return lambda keys: ~key_split(keys, fraction, seed)
        return lambda keys: key_split(keys, fraction, seed)

    def _snapshot(self, split: str) -> Callable[[int, int | None], Any]:
        read = self._ranges if self.index == "stream" else self._keys
        if self.snapshot == "epoch":
            return lambda epoch, upto: read(split, upto)

        def once(epoch: int, upto: int | None) -> Any:
            if split not in self._once or upto is not None:  # upto: a checkpoint's snapshot is the run's
                self._once[split] = read(split, upto)
            return self._once[split]

        return once

    def split_dataloader(self, split: str, train: bool) -> Loader:
        trainer = self.trainer
        reload = "reload_dataloaders_every_n_epochs"  # a Trainer attribute its loops read each epoch
        if trainer is not None and self.snapshot == "epoch" and getattr(trainer, reload) != 1:
            rank_zero_info(
                f"{type(self).__name__} reads a new snapshot of {self.sources[split].name!r} each epoch, so the "
                "Trainer makes its loaders again each epoch (reload_dataloaders_every_n_epochs=1); "
                "data.snapshot=once reads the keys once instead."
            )
            setattr(trainer, reload, 1)
        settings = self.loader_settings
        dataset = self.dataset(split)
        rank, world = self.rank_and_world()
        common: dict[str, Any] = {
            "train": train, "shuffle": settings.shuffle, "seed": derive_seed(self.seed, Stream.ORDER),
            "block": self.shuffle_block or max(settings.batch_size // 64, 1), "rank": rank, "world_size": world,
            "refresh": trainer is None,
            "epoch_of": (lambda: trainer.current_epoch) if trainer is not None else None,
        }  # fmt: skip
        batch_size, drop_last = settings.batch_size_for(train), train and settings.drop_last
        batches: KeyBatches | KeyStream
        if self.index == "stream":
            order = KeyStream(
                self._snapshot(split), self._range_reader(split), batch_size=batch_size, drop_last=drop_last,
                buffer=self.shuffle_buffer, changed=self._on_changed(dataset.bad, split), **common,
            )  # fmt: skip
            dataset.order = batches = order
        else:
            dataset.order = key_order = KeyOrder(self._snapshot(split), **common)
            batches = KeyBatches(key_order, batch_size, drop_last)
        self.bad_policy(split, "row", per_pass=len(dataset))  # the dataset's policy: later passes judged whole
        return self.build_dataloader(dataset, train=train, collate_fn=self.collate_or(passthrough), batches=batches)

    def _range_reader(self, split: str) -> Callable[[int, int], np.ndarray]:
        """``read(lo, hi)``: the keys of ``split`` from ``lo`` to ``hi`` committed now (one query, on this rank)."""
        return lambda lo, hi: self._keys(split, upto=hi, shared=False, since=lo)

    def _on_changed(self, bad: BadSamples, split: str) -> Callable[[DataError, int], None]:
        """What a :class:`KeyStream` does with a range whose rows changed: ``on_error`` decides."""
        name = self.sources[split].name

        def changed(error: DataError, rows: int) -> None:
            # Deleted rows are missing; rows inserted inside a range push as many snapshot rows out of
            # the rank shares (positions are the snapshot's): either way, that many rows are skipped.
            for _ in range(rows):
                bad.skip(f"'{name}', a row of a range that changed during the epoch", error)

        return changed

    @property
    def remakes_loaders(self) -> bool:
        return self.snapshot == "epoch"

    def empty_split_hint(self, split: str) -> str:
        if split == "train":
            return f"{self.sources['train'].describe()} has no training rows (or on_error=skip dropped them all)."
        return f"Give it rows (data.{split}_table), or hold out a larger share of the table (data.val_fraction)."

    # -- State: the fitted encoding (FittedEncoding saves it) -----------------------------------------

    def _fitted(self) -> tuple[TableEncoder, Any] | None:
        return None if self.encoding is None else (self.encoding.encoder, list(self.encoding.classes))

    def _forget_fit(self) -> bool:
        was_set_up, self.encoding = self.encoding is not None, None
        return was_set_up

    def _encoding(self) -> Encoding:
        if self.encoding is None:
            raise self.not_set_up_error()
        return self.encoding
