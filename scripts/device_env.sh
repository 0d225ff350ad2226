#!/usr/bin/env bash
# Prepare .device/: what a borrowed GPU machine needs to run chute's GPU checks, made here.
#
#   scripts/device_env.sh            # here, once: wheels, the compiled decoder, a TorchCodec stand-in
#   source .device/activate.sh       # there, first in the command (with `.device` carried)
#
# The lent machine (see docs/benchmarks.md "On a GPU") has its own Python 3.12, torch, torchvision,
# lightning, timm and OpenCV, and no package registry. It lacks Hydra and OmegaConf (carried as
# wheels), chute's crop-aware JPEG decoder (built here against this machine's libjpeg-turbo as a
# stable-ABI extension, which Python 3.12 loads; libjpeg.so.62 travels beside it) and TorchCodec,
# whose wheels need torch 2.14: a stand-in module decodes through torchvision.io instead (used only
# for PNG/WebP/GIF and CMYK JPEGs, which the GPU checks' photo folders do not hold).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.device
rm -rf "$out"
mkdir -p "$out/wheels" "$out/lib" "$out/shim/torchcodec"
pip=${PIP:-.venv/bin/python -m pip}

$pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$out/wheels" \
    hydra-core==1.3.2 omegaconf==2.3.0
$pip wheel -q --no-deps -w "$out/wheels" antlr4-python3-runtime==4.9.3  # sdist only on PyPI

include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
gcc -shared -fPIC -O3 -DPy_LIMITED_API=0x030B0000 -I"$include" src/chute/_native/jpegcrop.c -ljpeg \
    -o "$out/_jpegcrop.abi3.so"
cp "$(ldconfig -p | awk '/libjpeg.so.62 / {print $NF; exit}')" "$out/lib/"

cat >"$out/shim/torchcodec/__init__.py" <<'EOF'
"""Stand-in for TorchCodec on a machine whose torch its wheels do not support (device checks only)."""
EOF
cat >"$out/shim/torchcodec/decoders.py" <<'EOF'
"""``decode_image`` through torchvision.io, as TorchCodec's (mode RGB/GRAY, EXIF applied)."""
import torch
from torchvision.io import ImageReadMode
from torchvision.io import decode_image as _decode


def decode_image(data, mode=None, **_):
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    read = {"RGB": ImageReadMode.RGB, "GRAY": ImageReadMode.GRAY}.get(mode, ImageReadMode.UNCHANGED)
    return _decode(tensor, mode=read, apply_exif_orientation=True)


class VideoDecoder:  # chute reports TorchCodec's video decoding as unavailable
    def __init__(self, *args, **kwargs):
        raise RuntimeError("TorchCodec is not installed on this machine (a stand-in decodes images only)")
EOF

cat >"$out/activate.sh" <<'EOF'
# Sourced on the device machine, in the repository root, with .device carried.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .device/wheels/*.whl
cp .device/_jpegcrop.abi3.so src/chute/
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/.device/shim:$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}
export LD_LIBRARY_PATH=$PWD/.device/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONUNBUFFERED=1 PYTHON=python3
EOF
du -sh "$out"
