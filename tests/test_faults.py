"""Faults against real `bentoml serve` processes: a killed model process, model connections closed
under requests, a missing or corrupt model at start, SIGTERM under load, and uploads leaving nothing
on disk."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from benchmarks.loadgen import load
from tests.server import BENTOML, ROOT, Server


class Load:
    """Threads posting real images until stopped; records (start, end, status or exception name)."""

    def __init__(self, url: str, files: list[Path], threads: int = 8) -> None:
        self.url, self.payloads, self.log, self.stopped = url, [f.read_bytes() for f in files], [], False
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stopped:
                start = time.monotonic()
                try:
                    response = client.post("/predict", files={"image": ("x.png", self.payloads[index % len(self.payloads)])})
                    outcome = response.status_code
                    if outcome == 503:
                        assert response.headers.get("retry-after") and "error" in response.json()
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                    time.sleep(0.05)
                self.log.append((start, time.monotonic(), outcome))

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped = True
        for t in self.threads:
            t.join(90)


def model_process(server: Server) -> psutil.Process:
    children = psutil.Process(server.proc.pid).children(recursive=True)
    return next(p for p in children if "--service-name lungct-model" in " ".join(p.cmdline()))


def accepted_connections(process: psutil.Process, action=lambda sock: None) -> int:
    """Apply `action` to each connection `process` has accepted on its UNIX socket, reached through
    pidfd_getfd(2) (a copy closed at once, so it keeps nothing open). Returns how many there are."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(process.pid)
    count = 0
    try:
        for conn in process.net_connections(kind="unix"):
            fd = libc.syscall(438, pidfd, conn.fd, 0)  # SYS_pidfd_getfd
            if fd < 0:
                pytest.skip(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
            with socket.socket(fileno=fd) as sock:
                if conn.laddr and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    action(sock)
                    count += 1
    finally:
        os.close(pidfd)
    return count


def shut_down_connections(process: psutil.Process) -> int:
    """Shut down every connection `process` has accepted on its UNIX socket: both ends see it closed,
    the process lives on. Returns how many."""
    return accepted_connections(process, lambda sock: sock.shutdown(socket.SHUT_RDWR))


def test_model_connections_closed_under_requests_cost_no_error(shipped_tag, sample_files):
    """A connection to the model process that closes under a call while the model process lives
    (as an idle keep-alive connection could, closed just as it was reused): the call is sent again,
    the client sees no error."""
    with Server(env={"LUNGCT_MODEL_TAG": shipped_tag}) as server, Load(server.url, sample_files, 8) as traffic:
        time.sleep(2)
        closed = 0
        for _ in range(10):  # 1 s apart: the readiness probe a lost call makes is not itself cut
            closed += shut_down_connections(model_process(server))
            time.sleep(1)
        time.sleep(1)
        log = server.log_path.read_text(errors="replace")
    outcomes = Counter(outcome for _, _, outcome in traffic.log)
    assert closed > 0
    assert set(outcomes) == {200}, f"{outcomes}\n{log[-5000:]}"
    assert "lost its connection" in log, "no call was caught by a closing connection: the test proved nothing"
    assert "taken as down" not in log, log[-5000:]
    # the model process logs a cut connection it was reading a request from (BentoML), nothing else
    assert log.count("Traceback") == log.count("starlette.requests.ClientDisconnect"), log[-5000:]


def test_fronts_let_idle_model_connections_go_before_the_model_process_does(shipped_tag, sample_files):
    """A front pools its model connections for LUNGCT_MODEL_KEEPALIVE_S, not aiohttp's 15 s: it closes
    them before the model process's uvicorn would (5 s), so none is reused as it closes, and their
    buffers are freed."""
    with Server(env={"LUNGCT_MODEL_TAG": shipped_tag, "LUNGCT_MODEL_KEEPALIVE_S": "1"}) as server:
        load(server.url, sample_files, 64, 16)
        model = model_process(server)
        pooled = accepted_connections(model)
        time.sleep(3)  # past the 1 s keep-alive and the pool's next clean-up, before uvicorn's 5 s
        left = accepted_connections(model)
    assert pooled > 0, "no model connection was pooled after the requests: the test proved nothing"
    assert left == 0, f"{left} of {pooled} model connections still open 3 s after the last call"


@pytest.mark.parametrize("threads", [8, 0], ids=["under-load", "idle"])
def test_killed_model_process_recovers(shipped_tag, sample_files, threads):
    """/readyz says 503 (never 500 or a hang) from the kill until a new model process has loaded,
    whether or not requests reveal the dead process; requests meanwhile get 503, never hang."""
    with Server(env={"LUNGCT_MODEL_TAG": shipped_tag}) as server, Load(server.url, sample_files, threads) as traffic:
        time.sleep(2)
        killed_process = model_process(server)
        killed_process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        readiness = []
        deadline = killed + 180
        while time.monotonic() < deadline:
            try:
                readiness.append(httpx.get(f"{server.url}/readyz", timeout=10).status_code)
            except httpx.HTTPError:
                readiness.append("timeout")
            if readiness[-1] == 200 and 503 in readiness:
                break
            time.sleep(0.3)
        recovered = time.monotonic()
        time.sleep(4)
        context = f"killed {killed_process.pid}; /readyz: {readiness}\n{server.output()}"
        assert not killed_process.is_running(), context
        assert model_process(server).pid != killed_process.pid, context
        after_kill = httpx.post(f"{server.url}/predict", files={"image": ("x.png", sample_files[0].read_bytes())}, timeout=60)
    assert 503 in readiness, context
    assert set(readiness) <= {200, 503}, context
    assert readiness[-1] == 200, context
    assert after_kill.status_code == 200, after_kill.text
    if not threads:
        return
    outcomes = Counter(outcome for _, _, outcome in traffic.log)
    assert set(outcomes) <= {200, 503}, outcomes
    assert outcomes[503] > 0
    down_window = [end - start for start, end, outcome in traffic.log if killed < start < recovered]
    assert max(down_window) < 30, "requests while the model was down hung instead of getting 503"
    after = [outcome for start, _, outcome in traffic.log if start > recovered + 1]
    assert after and set(after) == {200}


def test_missing_model_exits_with_a_clear_message():
    result = subprocess.run([str(BENTOML), "serve", "service:LungCT", "--port", "0"], cwd=ROOT,
                            env={**os.environ, "LUNGCT_MODEL_TAG": "lungct:doesnotexist"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "lungct:doesnotexist" in result.stderr + result.stdout
    assert "python -m lungct.import_model" in result.stderr + result.stdout


def test_corrupt_model_exits_with_a_clear_message(tmp_path, shipped_tag, bentoml_home):
    home = tmp_path / "home"
    shutil.copytree(bentoml_home / "models", home / "models")
    name, version = shipped_tag.split(":")
    (home / "models" / name / version / "model.keras").write_bytes(b"not a keras archive")
    result = subprocess.run([str(BENTOML), "serve", "service:LungCT", "--port", "0"], cwd=ROOT,
                            env={**os.environ, "BENTOML_HOME": str(home), "LUNGCT_MODEL_TAG": shipped_tag},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert shipped_tag in output and "corrupt" in output and "python -m lungct.import_model" in output


def test_sigterm_under_load_finishes_in_flight_requests(shipped_tag, sample_files):
    server = Server(env={"LUNGCT_MODEL_TAG": shipped_tag}).start()
    with Load(server.url, sample_files, threads=16) as traffic:
        time.sleep(3)
        term = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(30)
        stopped = time.monotonic()
        time.sleep(1.5)
    server.log.close()
    assert code == 0
    assert stopped - term < 30
    in_flight = [outcome for start, end, outcome in traffic.log if start < term < end]
    assert in_flight and set(in_flight) == {200}, Counter(in_flight)
    late = [outcome for start, _, outcome in traffic.log if start > stopped]
    assert late and all(isinstance(o, str) for o in late), "requests after shutdown were not refused"


def test_uploads_leave_no_files_behind(shipped_tag, sample_files, tmp_path):
    tmp = Path(tempfile.mkdtemp(prefix="lct", dir="/tmp"))  # short: BentoML puts UNIX sockets here
    with Server(env={"LUNGCT_MODEL_TAG": shipped_tag, "TMPDIR": str(tmp)}) as server:
        hostile = "../../" + "x" * 300 + ".png"
        for files in ({"image": (hostile, sample_files[0].read_bytes())}, {"image": ("bad.png", b"garbage")},
                      {"image": ("a\0b.png", sample_files[1].read_bytes())}):
            response = httpx.post(f"{server.url}/predict", files=files, timeout=60)
            assert response.status_code in (200, 400), response.text
        result = load(server.url, sample_files, requests=64, concurrency=16)
        assert result.error_count == 0
        time.sleep(1)
        uploads = {f.read_bytes() for f in sample_files} | {b"garbage"}
        request_dirs = list(tmp.glob("bentoml-request-*"))
        assert request_dirs, "uploads were not spooled under the server's TMPDIR"
        leftovers = [p for p in tmp.rglob("*") if p.is_file() and (p.read_bytes() in uploads or
                                                                     any(d in p.parents for d in request_dirs))]
    shutil.rmtree(tmp, ignore_errors=True)
    assert leftovers == [], leftovers
    assert not list(ROOT.glob("*.png")) and not (tmp_path.parent / "x").exists()
