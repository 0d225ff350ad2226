"""``python -m chute.info`` (or ``chute-info``): the fast paths this install uses, and library versions.

Paste its output into a bug report or a benchmark note: it says whether chute's crop-aware JPEG
decoder is built, which decoders and accelerators are active, and what is installed.
"""

from __future__ import annotations

import os

from chute import fastpaths


def report() -> str:
    """The report ``main`` prints."""
    lines = ["chute fast paths:"]
    for name, active, detail in fastpaths.fast_paths():
        lines.append(f"  [{'x' if active else ' '}] {name}" + (f": {detail}" if detail else ""))
    lines.append("versions:")
    lines += [f"  {name:<24} {version}" for name, version in fastpaths.versions().items()]
    lines.append(f"  {'cpus':<24} {os.cpu_count()}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
