# Type stub of the C extension built from src/chute/_native/jpegcrop.c.
from typing import Any

LIBJPEG_TURBO_VERSION_NUMBER: int

class DecodeError(ValueError): ...

def header(data: bytes, /) -> tuple[int, int, int, int]: ...
def decode_into(
    data: bytes, x: int, y: int, w: int, h: int, scale_num: int, gray: bool, out: Any, /
) -> tuple[int, int, int]: ...
