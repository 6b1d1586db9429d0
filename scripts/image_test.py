"""Run the LungCT image with podman and check it against a local `bentoml serve` of the same bento.

    scripts/image_test.sh [IMAGE]      (what `make image-test` runs; IMAGE defaults to build/image/image-ref)

1. starts the image with podman (port 3000 published on a free loopback port), waits for /readyz;
2. serves the same bento locally (`bentoml serve lungct:<version>`);
3. sends the real CT slices of tests/samples to both, with curl (/predict) and with
   bentoml.SyncHTTPClient (predict and predict_batch): same classes, same model, probabilities
   equal to 1e-5;
4. checks /metrics counted those requests, the health check, PID 1 (tini), the user (non-root)
   that no compiler toolchain or git is in the image, and that the model's folder (weights,
   metadata, model card) is there as in the store;
5. stops the container (SIGTERM, 10 s before SIGKILL) and measures how long it took: must be < 10 s
   and without SIGKILL;
6. exports the image with `podman save --format oci-archive` and inspects the archive with skopeo:
   tag, entrypoint, exposed port 3000, non-root user.
Exits non-zero on the first failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.server import Server, free_port  # noqa: E402

BUILD = ROOT / "build" / "image"
SAMPLES = sorted((ROOT / "tests" / "samples").glob("*/*.png"))
TOLERANCE = 1e-5
STOP_LIMIT_S = 10
failures: list[str] = []
timings: dict[str, float] = {}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def check(condition: bool, message: str) -> None:
    if condition:
        log(f"ok: {message}")
    else:
        log(f"FAIL: {message}")
        failures.append(message)


def run(*cmd: str, check_rc: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check_rc and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def same_prediction(a: dict, b: dict) -> bool:
    return (a["class"] == b["class"] and a["model"] == b["model"] and a["probabilities"].keys() == b["probabilities"].keys()
            and all(abs(a["probabilities"][k] - b["probabilities"][k]) <= TOLERANCE for k in a["probabilities"])
            and abs(a["confidence"] - b["confidence"]) <= TOLERANCE)


def as_dict(value):
    if hasattr(value, "model_dump"):
        return value.model_dump(by_alias=True)
    if isinstance(value, list):
        return [as_dict(v) for v in value]
    return value


def curl_predict(url: str, path: Path) -> dict:
    out = run("curl", "-sS", "--fail-with-body", "--max-time", "60", "-F", f"image=@{path}", f"{url}/predict").stdout
    return json.loads(out)


def client_answers(url: str) -> tuple[list[dict], list[dict]]:
    import bentoml

    with bentoml.SyncHTTPClient(url, timeout=120) as client:
        singles = [as_dict(client.predict(image=p)) for p in SAMPLES]
        batch = as_dict(client.predict_batch(images=SAMPLES))
    return singles, batch


def request_total(url: str, endpoint: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("bentoml_service_request_total{") and f'endpoint="{endpoint}"' in line \
                and 'http_response_code="200"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def stored_model(bento: str) -> tuple[str, list[str]]:
    """The bento's model version and the files of its folder in the local store (model card included)."""
    import bentoml

    model = bentoml.models.get(bentoml.bentos.get(bento).info.all_models[0].tag)
    return model.tag.version, sorted(os.listdir(model.path))


def wait_ready(url: str, name: str, timeout: float = 300) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        state = run("podman", "inspect", "--format", "{{.State.Status}}", name, check_rc=False).stdout.strip()
        if state not in ("running", "created", "configured"):
            raise RuntimeError(f"container {name} is {state}:\n{run('podman', 'logs', name, check_rc=False).stdout[-5000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{name} not ready after {timeout}s:\n{run('podman', 'logs', name, check_rc=False).stdout[-5000:]}")


def main() -> int:
    image = sys.argv[1] if len(sys.argv) > 1 else (BUILD / "image-ref").read_text().strip()
    version = image.rsplit(":", 1)[1]
    bento = f"lungct:{version}"
    home = os.environ.setdefault("BENTOML_HOME", str(Path.home() / "bentoml"))
    name = f"lungct-image-test-{os.getpid()}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log(f"image {image}, bento {bento} (BENTOML_HOME={home})")
    check(run("podman", "image", "exists", image, check_rc=False).returncode == 0, f"image {image} exists")

    local = Server(target=bento, env={"BENTOML_HOME": home}, cwd=Path(tempfile.mkdtemp(prefix="lungct-serve-")))
    started = False
    try:
        run("podman", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:3000", image)
        started = True
        timings["container ready (s)"] = wait_ready(url, name)
        log(f"container ready on {url} in {timings['container ready (s)']:.1f} s")
        local.start()
        log(f"local bentoml serve {bento} ready on {local.url} in {local.ready_seconds:.1f} s")

        # --- curl, one image a request
        for path in SAMPLES:
            theirs, ours = curl_predict(url, path), curl_predict(local.url, path)
            check(same_prediction(theirs, ours),
                  f"curl /predict {path.parent.name}/{path.name}: {theirs['class']} {theirs['confidence']:.6f}"
                  f" == local {ours['class']} {ours['confidence']:.6f}")
        # --- bentoml.SyncHTTPClient, single and batch
        (c_single, c_batch), (l_single, l_batch) = client_answers(url), client_answers(local.url)
        check(len(c_single) == len(SAMPLES) and all(same_prediction(a, b) for a, b in zip(c_single, l_single)),
              f"SyncHTTPClient.predict x{len(SAMPLES)} equals local")
        check(len(c_batch) == len(SAMPLES)
              and all(a["error"] is None and same_prediction(a["prediction"], b["prediction"])
                      for a, b in zip(c_batch, l_batch)),
              f"SyncHTTPClient.predict_batch of {len(SAMPLES)} equals local")
        check(all(same_prediction(a, b["prediction"]) for a, b in zip(c_single, c_batch)),
              "batch answers equal single answers in the container")

        # --- metrics, health check, PID 1, user
        predicted = request_total(url, "/predict")
        check(predicted >= 2 * len(SAMPLES), f"/metrics counts {predicted:.0f} successful /predict (sent {2 * len(SAMPLES)})")
        check(request_total(url, "/predict_batch") >= 1, "/metrics counts /predict_batch")
        check(httpx.get(f"{url}/livez", timeout=10).status_code == 200, "/livez answers 200")
        health = run("podman", "healthcheck", "run", name, check_rc=False)
        check(health.returncode == 0, f"HEALTHCHECK (on /readyz) passes: rc={health.returncode} {health.stdout.strip()}")
        pid1 = run("podman", "exec", name, "cat", "/proc/1/cmdline").stdout.replace("\0", " ").strip()
        check(pid1.startswith("/usr/bin/tini"), f"PID 1 is the init: {pid1[:80]}")
        uid = run("podman", "exec", name, "id", "-u").stdout.strip()
        check(uid not in ("", "0"), f"service runs as uid {uid}")
        compilers = run("podman", "exec", name, "sh", "-c", "command -v gcc cc git || true").stdout.split()
        check(not compilers, f"no compiler toolchain or git in the image: {compilers}")
        model_version, stored_files = stored_model(bento)
        in_image = sorted(run("podman", "exec", name, "ls", f"/home/bentoml/bento/models/lungct/{model_version}").stdout.split())
        check(in_image == stored_files, f"the image holds the model's folder as stored: {in_image}")

        # --- stop: SIGTERM, SIGKILL only after STOP_LIMIT_S
        t0 = time.perf_counter()
        run("podman", "stop", "-t", str(STOP_LIMIT_S), name, timeout=STOP_LIMIT_S + 30)
        timings["container stop (s)"] = time.perf_counter() - t0
        exit_code = run("podman", "inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        check(timings["container stop (s)"] < STOP_LIMIT_S and exit_code != "137",
              f"stopped in {timings['container stop (s)']:.2f} s (limit {STOP_LIMIT_S} s), exit code {exit_code}")
    finally:
        local.stop()
        if started:
            run("podman", "rm", "-f", "-t", "0", name, check_rc=False)

    # --- OCI archive
    for old in BUILD.glob("lungct-*.oci.tar"):  # one archive at a time: each is ~800 MiB
        old.unlink()
    archive = BUILD / f"lungct-{version}.oci.tar"
    t0 = time.perf_counter()
    run("podman", "save", "--format", "oci-archive", "-o", str(archive), image)
    timings["podman save oci-archive (s)"] = time.perf_counter() - t0
    log(f"saved {archive.name}: {archive.stat().st_size / 2**20:.0f} MiB")
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
    refs = [m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in index["manifests"]]
    check(any(ref and ref.endswith(version) for ref in refs), f"archive is tagged with the bento version: {refs}")
    manifest = json.loads(run("skopeo", "inspect", f"oci-archive:{archive}").stdout)
    check(manifest.get("Labels", {}).get("ai.lungct.bento") == bento, f"label ai.lungct.bento = {bento}")
    config = json.loads(run("skopeo", "inspect", "--config", f"oci-archive:{archive}").stdout)["config"]
    entrypoint = config.get("Entrypoint") or []
    check(entrypoint[:1] == ["/usr/bin/tini"] and entrypoint[-1].endswith("env/docker/entrypoint.sh"),
          f"entrypoint {entrypoint}")
    check("3000/tcp" in (config.get("ExposedPorts") or {}), f"exposed ports {sorted(config.get('ExposedPorts') or {})}")
    user = config.get("User", "")
    check(user not in ("", "0", "root") and not user.startswith(("0:", "root:")), f"user {user!r} is not root")

    for key, value in timings.items():
        log(f"{key}: {value:.2f}")
    if failures:
        log(f"{len(failures)} check(s) failed: {failures}")
        return 1
    log("image test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
