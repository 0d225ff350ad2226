"""A real 2-process DDP predict on the CPU (gloo), run by tests/test_lightning_features.py as a script.

    python tests/ddp_predict.py OUT_DIR DIGITS_ROOT BACKEND WORKERS [PREDICT_ROOT]

Predicts each digit image's mean (tests/test_lightning_features.py's ``ImageMeans``) with a prediction
writer; each rank writes the ``batch_indices`` and predictions its writer got, the predictions
``trainer.predict`` returned and the DataModule's ``predicted_files`` to OUT_DIR/rank<r>.json. With
PREDICT_ROOT, the images there are predicted instead of the test split, with ``on_error="skip"``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L

from tests.test_lightning_features import ImageMeans, Written, digits


def main() -> None:
    out, root, backend, workers = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    dm = digits(root, backend=backend, num_workers=workers)
    if len(sys.argv) > 5:
        dm = digits(root, predict_root=sys.argv[5], on_error="skip", backend=backend, num_workers=workers)
    writer = Written()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[writer], default_root_dir=str(out),
    )  # fmt: skip
    returned = trainer.predict(ImageMeans(), datamodule=dm)
    assert returned is not None
    record = {
        "world": trainer.world_size, "batches": writer.batches, "epoch": writer.epoch,
        "returned": [float(m) for batch in returned for m in batch], "files": dm.predicted_files,
    }  # fmt: skip
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
