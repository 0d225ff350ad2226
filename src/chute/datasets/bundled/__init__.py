"""Data chute writes itself, offline, from data that ships with installed packages: the default
experiments, the tests and the benchmarks run on these, and nothing is ever downloaded.

- :class:`DigitsFolder`: scikit-learn's handwritten digits as a PNG class-folder tree.
- :class:`PhotoFolder`: JPEG photographs cut from scikit-image's sample images.
- :class:`MotionClips`: compressed videos of camera motion over the same photographs.
- :class:`SklearnTable` / :class:`SklearnSqlite`: scikit-learn's bundled tables as CSV, Parquet or SQLite.
- :class:`LengthMajoritySequences`: a sequence task whose label depends on content and length (JSON Lines).

Each writes once (atomically) and reuses the folder when called again with the same settings. The
same names are importable from :mod:`chute.datasets`.
"""

from chute.datasets.bundled.digits import DigitsFolder
from chute.datasets.bundled.motion_clips import MotionClips
from chute.datasets.bundled.photos import PhotoFolder
from chute.datasets.bundled.sklearn_tables import (
    SKLEARN_TABLES,
    SklearnSqlite,
    SklearnTable,
    sklearn_table,
    write_table,
)
from chute.datasets.bundled.synthetic_sequences import LengthMajoritySequences

__all__ = [
    "SKLEARN_TABLES",
    "DigitsFolder",
    "LengthMajoritySequences",
    "MotionClips",
    "PhotoFolder",
    "SklearnSqlite",
    "SklearnTable",
    "sklearn_table",
    "write_table",
]
