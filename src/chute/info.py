"""``python -m chute.info`` (or ``chute-info``): the fast paths this install uses, and library versions.

Paste its output into a bug report or a benchmark note: it says whether chute's crop-aware JPEG
decoder is built, which decoders and accelerators are active, and what is installed.
"""

from __future__ import annotations

import os
from importlib import metadata

from chute import fastpaths


def report() -> str:
    """The report ``main`` prints."""
    lines = ["chute fast paths:"]
    for name, active, detail in fast_paths():
        lines.append(f"  [{'x' if active else ' '}] {name}" + (f": {detail}" if detail else ""))
    lines.append("versions:")
    lines += [f"  {name:<24} {version}" for name, version in versions().items()]
    lines.append(f"  {'cpus':<24} {os.cpu_count()}")
    return "\n".join(lines)


def fast_paths() -> list[tuple[str, bool, str]]:
    """``(name, active, detail)`` for each path that makes chute fast where it can run."""
    import cv2
    import torch

    jpegcrop = fastpaths.jpegcrop
    detail = fastpaths.MISSING
    if jpegcrop is not None:
        turbo = jpegcrop.LIBJPEG_TURBO_VERSION_NUMBER  # e.g. 2001005 for 2.1.5
        detail = f"libjpeg-turbo {turbo // 1000000}.{turbo // 1000 % 1000}.{turbo % 1000}"
    paths = [("crop-aware JPEG decoding (chute._jpegcrop)", jpegcrop is not None, detail)]
    paths.append(
        (
            "strict whole-JPEG decoding",
            True,
            "chute._jpegcrop" if jpegcrop is not None else f"simplejpeg {_version('simplejpeg')} (fallback)",
        )
    )
    paths.append(("PNG, WebP, GIF and CMYK JPEG decoding (TorchCodec)", True, f"torchcodec {_version('torchcodec')}"))
    paths.append(("resize after a crop (OpenCV)", True, f"opencv {cv2.__version__}, {cv2.getNumThreads()} threads"))
    paths.append(
        (
            "uint8 -> normalized float on the CPU (chute._pixels)",
            fastpaths.pixels is not None,
            "vectorized" if fastpaths.pixels is not None else f"{fastpaths.PIXELS_MISSING}; OpenCV's LUT instead",
        )
    )
    paths.append(("video decoding, decoder=pyav (FFmpeg in PyAV's wheel)", True, _pyav_detail()))
    from chute.datasets.video_decode import torchcodec_video_error

    why = torchcodec_video_error()
    paths.append(("video decoding, decoder=torchcodec (system FFmpeg)", why is None, why or ""))
    cuda = torch.cuda.is_available()
    paths.append(
        ("CUDA: pinned-memory copies, batch hook on the GPU", cuda, torch.cuda.get_device_name(0) if cuda else "none")
    )
    bf16 = fastpaths.cpu_has_native_bf16()
    paths.append(("native bfloat16 on the CPU (AVX512-BF16 / AMX)", bf16, "" if bf16 else "emulated: slow"))
    return paths


def _pyav_detail() -> str:
    try:
        import av
    except ImportError:
        return "PyAV not installed"
    codec = av.library_versions.get("libavcodec", ())
    return f"av {av.__version__}, libavcodec {'.'.join(map(str, codec))}"


def versions() -> dict[str, str]:
    """Installed versions of chute and the libraries its speed and results depend on."""
    import platform

    names = [
        "chute", "torch", "torchvision", "lightning", "torchcodec", "simplejpeg", "pillow", "numpy",
        "opencv-python-headless", "pyarrow", "albumentations", "hydra-core", "av", "adbc-driver-sqlite",
        "adbc-driver-postgresql",
    ]  # fmt: skip
    return {"python": platform.python_version(), **{name: _version(name) for name in names}}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
