"""Which fast paths this install has, and the one place that loads chute's compiled decoder.

chute's crop-aware JPEG decoder (``chute._jpegcrop``, :mod:`chute.transforms.fused`) is a C
extension built at install time against the system's libjpeg-turbo. The build is optional: without
a C compiler or libjpeg's headers the install succeeds without it, JPEGs decode whole through
simplejpeg's libjpeg-turbo (as strict about corrupt data: a file cut short fails), and crops
happen after decoding: about half as fast (RandomResizedCrop(224) of 400-640 px photos on one
thread, 2026-11-28: 500-600 images/s built, 210-380 without). That is said once per process
(:func:`say_if_missing`: ``train.py`` at start-up, an image DataModule's ``setup``) and by
``python -m chute.info`` (or ``chute-info``, :mod:`chute.info`), which lists every fast path and
library version. This module only loads; the report lives there, so the decoders that import this
module never import the report's subjects back.

A second, smaller extension (``chute._pixels``) normalizes a CPU trainer's uint8 batches into
floats in one vectorized pass; it needs only a C compiler, and without it OpenCV's lookup table does
the same work, slower (:class:`chute.transforms.NormalizeBatch`).

``CHUTE_NATIVE=0`` in the environment turns both extensions off, to check the fallbacks.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

log = logging.getLogger("chute")


def _load(name: str, needs: str) -> tuple[ModuleType | None, str]:
    if os.environ.get("CHUTE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "turned off by CHUTE_NATIVE=0"
    try:
        return importlib.import_module(f"chute.{name}"), ""
    except ImportError as err:  # pragma: no cover - depends on the build machine
        return None, f"not built ({err}); {needs} needed at install time"


#: The compiled crop decoder, or ``None`` (see :data:`MISSING` for why).
jpegcrop, MISSING = _load("_jpegcrop", "a C compiler and libjpeg-turbo's headers are")
#: The compiled uint8 -> normalized float32 pass, or ``None`` (see :data:`PIXELS_MISSING` for why).
pixels, PIXELS_MISSING = _load("_pixels", "a C compiler is")
_said = False


def say_if_missing() -> None:
    """Log once per process that the crop-aware decoder is missing, why, and how to build it."""
    global _said
    if jpegcrop is not None or _said:
        return
    _said = True
    log.warning(
        "chute: the crop-aware JPEG decoder (chute._jpegcrop) is %s. JPEGs decode whole (strict "
        "simplejpeg) and are cropped after: correct, about half as fast. To build it: install a C "
        "compiler and libjpeg-turbo's headers (Debian/Ubuntu: apt install gcc libjpeg-dev), then "
        "reinstall chute. `python -m chute.info` lists the fast paths in use.",
        MISSING,
    )


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16 in Linux's CPU flags).

    Without them torch emulates bf16 matrix products and convolutions on the CPU: ``bf16-mixed``
    trained the default model ~9x slower per step than ``32-true`` on the AMD EPYC development
    machine (``docs/benchmarks.md``). Other systems report ``False``.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))
