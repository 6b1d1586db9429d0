"""Start and stop a real `bentoml serve` process on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENTOML = Path(sys.executable).parent / "bentoml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_home(store: Path) -> Path:
    """A BENTOML_HOME of this server's own that shares `store`'s models and bentos: BentoML wipes
    the Prometheus folder under BENTOML_HOME at every start, which would break a running server's
    /metrics."""
    home = Path(tempfile.mkdtemp(prefix="serve-", dir=store.parent))
    for name in ("models", "bentos"):
        (store / name).mkdir(parents=True, exist_ok=True)
        (home / name).symlink_to(store / name)
    return home


class Server:
    def __init__(self, target: str = "service:LungCT", env: dict[str, str] | None = None, cwd: Path = ROOT,
                 ready_timeout: float = 180.0) -> None:
        self.target, self.cwd, self.ready_timeout = target, cwd, ready_timeout
        self.env = {**os.environ, **(env or {})}
        self.env["BENTOML_HOME"] = str(own_home(Path(self.env["BENTOML_HOME"])))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(self.env["BENTOML_HOME"]) / f"serve-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.ready_seconds: float | None = None

    def command(self) -> list[str]:
        return [str(BENTOML), "serve", self.target, "--host", "127.0.0.1", "--port", str(self.port),
                "--timeout-keep-alive", "75"]

    def start(self) -> "Server":
        self.log = open(self.log_path, "wb")
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.command(), cwd=self.cwd, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = started + self.ready_timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command()[:2]} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.ready_seconds = time.perf_counter() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.command()[:2]} not ready after {self.ready_timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)
        finally:
            self.log.close()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
