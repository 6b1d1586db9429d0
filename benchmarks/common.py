"""Shared pieces of the benchmark and soak scripts: a fresh model store, the servers, RSS, report blocks."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
REPORT = ROOT / "BENCHMARKS.md"
PYTHON = sys.executable
MB = 1024 * 1024

sys.path.insert(0, str(ROOT))
from tests.server import Server  # noqa: E402


def fresh_store(home: str | Path | None = None) -> tuple[dict[str, str], str]:
    """A new BENTOML_HOME (a temporary folder unless `home` is given; the serving logs stay there)
    with the model shipped in models/ imported by `python -m lungct.import_model`; returns (environment, tag)."""
    # tests/server.py gives each server a home of its own beside this one: keep them all in one folder
    home = str(home) if home else str(Path(tempfile.mkdtemp(prefix="lungct-bench-")) / "store")
    Path(home).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENTOML_HOME": home, "BENTOML_DO_NOT_TRACK": "True", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([PYTHON, "-m", "lungct.import_model"], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    match = re.search(r"model in store: (\S+)", out)
    if not match:
        raise RuntimeError(f"python -m lungct.import_model printed no tag:\n{out}")
    return env, match.group(1)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def service_processes(server: Server) -> dict[str, psutil.Process]:
    """The processes of a `bentoml serve`: the CLI itself, the front process and the model process."""
    root = psutil.Process(server.proc.pid)
    found = {"serve_cli": root}
    for child in root.children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "--service-name" in cmdline:
            name = cmdline[cmdline.index("--service-name") + 1]
            role = "model" if name.endswith("-model") else "front"
            count = sum(1 for key in found if key.split("-")[0] == role)
            found[role if count == 0 else f"{role}-{count + 1}"] = child  # several workers: front, front-2
    return found


class FlaskServer(Server):
    """`python benchmarks/flask_app.py` on a free port, ready when /readyz answers."""

    def __init__(self, tag: str, env: dict[str, str], call: str = "predict", ready_timeout: float = 180.0) -> None:
        self.tag, self.call = tag, call
        super().__init__(env=env, ready_timeout=ready_timeout)

    def command(self) -> list[str]:
        return [PYTHON, str(ROOT / "benchmarks" / "flask_app.py"), "--port", str(self.port), "--model", self.tag,
                "--call", self.call]

    def processes(self) -> dict[str, psutil.Process]:
        return {"flask": psutil.Process(self.proc.pid)}


def rss_mb(processes: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for role, proc in processes.items():
        try:
            out[role] = round(proc.memory_info().rss / MB, 1)
        except psutil.Error:
            out[role] = float("nan")
    return out


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for role, proc in processes.items():
        try:
            times = proc.cpu_times()
            out[role] = times.user + times.system
        except psutil.Error:
            out[role] = float("nan")
    return out


class RssSampler:
    """Samples the RSS of every serving process in a thread; `peak()` since the last `reset()`."""

    def __init__(self, processes: dict[str, psutil.Process], every: float = 0.5) -> None:
        self.processes, self.every = processes, every
        self._peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for role, value in rss_mb(self.processes).items():
                self._peak[role] = max(self._peak.get(role, 0.0), value)

    def reset(self) -> None:
        self._peak = rss_mb(self.processes)

    def peak(self) -> dict[str, float]:
        current = rss_mb(self.processes)
        return {role: max(self._peak.get(role, 0.0), current[role]) for role in current}

    def __enter__(self) -> "RssSampler":
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def write_block(name: str, markdown: str, path: Path = REPORT) -> None:
    """Replace the block between `<!-- name:start -->` and `<!-- name:end -->` in BENCHMARKS.md,
    or append it; everything else in the file (the hand-written Profile section) is kept."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
