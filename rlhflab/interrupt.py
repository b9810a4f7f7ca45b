"""Ctrl-C and SIGTERM stop a training loop at the next step boundary instead of mid-update."""

from __future__ import annotations

import signal
import threading

# SIGTERM is what SLURM, Kubernetes and `timeout` send before they kill: treat it like Ctrl-C.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
