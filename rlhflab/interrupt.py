"""Ctrl-C and SIGTERM stop a training loop at the next step boundary instead of mid-update, stop
any other work at once, and a sweep's point stops when its driver dies."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

# SIGTERM is what SLURM, Kubernetes and `timeout` send before they kill: treat it like Ctrl-C.
SIGNALS = (signal.SIGINT, signal.SIGTERM)
PARENT_ENV = "RLHFLAB_STOP_WITH_PARENT"  # set by `rlhflab sweep` for its points: the driver's pid


class StopRequest:
    """While active, the first Ctrl-C or SIGTERM sets `requested`; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this step and saving a checkpoint (send it again to abort now)...", flush=True)


def _stop_now(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_at_once() -> Iterator[None]:
    """While active, Ctrl-C and SIGTERM raise KeyboardInterrupt where the process is (StopRequest
    takes over inside a training loop). SIGTERM would otherwise kill the process outright (exit 143,
    a half-made run left behind), and a job the shell started in the background has SIGINT ignored,
    so Python installs no Ctrl-C handler of its own: both are set here explicitly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _stop_now) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_with_parent() -> None:
    """In a sweep's point (PARENT_ENV set to the driver's pid): have the kernel send SIGTERM when
    the driver dies, even by kill -9, so no point outlives it (Linux prctl PR_SET_PDEATHSIG).

    Done here, in the point's own process after exec, rather than in a preexec_fn, which is unsafe
    in a driver that has started threads (torch, tqdm). Raises KeyboardInterrupt when the driver
    died before this ran."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(parent):  # the driver was gone before the kernel could watch it
        raise KeyboardInterrupt
