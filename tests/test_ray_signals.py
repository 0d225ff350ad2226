"""Joining Ray leaves the process's SIGTERM handler in place (a Lightning fit's clean stop)."""

from __future__ import annotations

import ctypes
import os
import signal
import time

import pytest


class _SigAction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]  # fmt: skip


def _c_handler(signum: int) -> int | None:
    """The handler the kernel calls for ``signum`` (Linux ``struct sigaction``)."""
    action = _SigAction()
    assert ctypes.CDLL(None).sigaction(signum, None, ctypes.byref(action)) == 0
    return action.handler


@pytest.mark.skipif(not os.path.exists("/proc/self"), reason="Linux sigaction layout")
def test_a_sigterm_after_joining_ray_reaches_the_processs_own_handler() -> None:
    """``ray.init`` took SIGTERM (a Python handler calling sys.exit(15), and a C-level crash handler
    that dumps a stack and kills the process): a run with ``loader.backend=ray`` or ``data=ray_images``
    stopped by a scheduler ended without Lightning's checkpoint of its last steps or its metrics."""
    pytest.importorskip("ray")
    from chute.integrations.ray_tasks import connect

    got: list[int] = []

    def handler(signum: int, frame: object) -> None:
        got.append(signum)

    before = signal.signal(signal.SIGTERM, handler)
    usr2 = signal.signal(signal.SIGUSR2, handler)  # Python's own C trampoline, to compare with
    try:
        connect(num_cpus=1)
        assert signal.getsignal(signal.SIGTERM) is handler
        assert _c_handler(signal.SIGTERM) == _c_handler(signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            if got:
                break
            time.sleep(0.01)
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGUSR2, usr2)
