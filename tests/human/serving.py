"""`rlhflab serve` in its own process on a free port, for the storage, concurrency and browser tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass
class Server:
    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    log: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(db: Path, log: Path, *args: str, timeout: float = 60.0) -> Server:
    """Start the server and wait until it answers /api/health."""
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("RLHFLAB_TOKEN", None)
    handle = open(log, "w")  # a file, not a pipe: a chatty server can never block on a full pipe
    process = subprocess.Popen([sys.executable, "-m", "rlhflab.cli", "serve", "--db", str(db), "--port", str(port), *args],
                               stdout=handle, stderr=subprocess.STDOUT, env=env)
    handle.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"rlhflab serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
                if response.status == 200:
                    return Server(process, url, log)
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"rlhflab serve did not answer within {timeout} s:\n{log.read_text()}")
        time.sleep(0.1)


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@contextlib.contextmanager
def running_server(db: Path, log: Path, *args: str) -> Iterator[Server]:
    server = start_server(db, log, *args)
    try:
        yield server
    finally:
        stop_server(server)
