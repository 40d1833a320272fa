"""Start the local stack's Python processes (dev host, emulator) and wait for their ready line.

Each prints one JSON line when it is ready; everything after it is logs, which are copied to our
stdout (or a file) line by line so nothing blocks on a full pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent


class Service:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log: IO[str] | None = None) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log = log
        self.process: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}
        self.output: list[str] = []  # every line, for tests that look for a log line

    def start(self, timeout: float = 60.0) -> Service:
        self.process = subprocess.Popen(
            [sys.executable, *self.args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        got_ready = threading.Event()
        threading.Thread(target=self._pump, args=(got_ready,), daemon=True).start()
        if not got_ready.wait(timeout) or not self.ready:
            self.stop()
            tail = "".join(self.output[-20:])
            raise RuntimeError(f"{self.name} did not start (exit {self.process.returncode}):\n{tail}")
        return self

    def _pump(self, got_ready: threading.Event) -> None:
        assert self.process and self.process.stdout
        for line in self.process.stdout:
            self.output.append(line)
            if not self.ready and line.startswith("{"):
                try:  # the object at the start of the line (another thread's output may follow it)
                    self.ready, _ = json.JSONDecoder().raw_decode(line)
                except ValueError:
                    pass
                else:
                    got_ready.set()
                    continue
            if self.log:
                self.log.write(f"[{self.name}] {line}")
                self.log.flush()
        got_ready.set()  # exited before it was ready

    def wait_for_output(self, text: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.output):
                return True
            time.sleep(0.05)
        return False

    def kill(self) -> None:
        """As ``kill -9`` does: no chance to clean up."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
