"""``RandomState``: the process's random generators in every checkpoint, so a resumed run draws on."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RandomState(L.Callback):
    """Saves the global random generators' states (torch's CPU and CUDA generators, NumPy's and
    Python's) in each checkpoint and restores them when training resumes from one.

    chute's loaders draw from generators of their own, seeded by (seed, epoch, ...), so a resumed
    run reads the same batches without this. What draws from the global generators is the model:
    dropout, and random augmentations done on the device. Without the saved state those draws
    start again from ``seed_everything``, and a run stopped and resumed ends with other weights than
    one that was not. Under DDP the state saved is rank 0's, and every rank restores it (Lightning
    seeds every rank alike). Stored as tensors and plain numbers: it loads with
    ``torch.load(weights_only=True)``.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, python, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": str(kind),
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "python": {"version": int(version), "state": list(python), "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        saved = state_dict["numpy"]
        np.random.set_state(
            (saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"], saved["gauss"])
        )
        python = state_dict["python"]
        random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
