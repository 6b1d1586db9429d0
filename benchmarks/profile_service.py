"""Where the service's CPU time goes under load: py-spy on the front and the model process.

    python -m benchmarks.profile_service [--requests 3000] [--concurrency 32] [--service-dir DIR]

Starts `bentoml serve` (fresh store, the shipped model), warms it up, then records both serving
processes with `py-spy record --format raw` while the load generator sends real CT images.
Every busy sample (all threads; threads waiting in select or on a queue are left out) is put in
one category by the frames on its stack: the work that owns it (decode, preprocess, the upload
guard's parse, BentoML's request parsing and response building, IPC, the model call), else the
innermost framework layer (tracing and logging, the HTTP/ASGI stack). TensorFlow's own C++
threads are invisible to py-spy: the model call's share is the Python thread waiting on it.
Writes benchmarks/results/profile.json and the collapsed stacks (profile-front.txt,
profile-model.txt; open them with https://www.speedscope.app or flamegraph.pl), prints the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, Server, cpu_seconds, fresh_store, service_processes
from benchmarks.loadgen import ct_files, load

# Work that owns everything it calls: the first category with a frame anywhere on the stack wins.
OWNING: list[tuple[str, tuple[str, ...]]] = [
    ("model call (TensorFlow)", ("tensorflow/", "keras/", "lungct/predictor.py")),
    ("decode (Pillow / pydicom, lungct/decode.py)", ("decode_image (",)),
    ("preprocess (crop, resize, contrast)", ("lungct/preprocess.py",)),
    ("upload guard: multipart parse + re-encode", ("UploadGuard._read_form (", "encode_form (")),
    ("BentoML request parsing (multipart, temp files, pickle)", ("IOMixin.from_http_request (", "parse_request (",
                                                                "FileSchema.decode (")),
    ("BentoML response building (JSON schema, pydantic)", ("IOMixin.to_http_response (", "IterableResponse.__call__ (")),
    ("IPC to the model process (aiohttp client)", ("_bentoml_impl/client", "aiohttp/")),
    ("adaptive batching dispatcher", ("bentoml/_internal/marshal/dispatcher.py",)),
]
# Framework layers that wrap every request: the innermost (leaf-most) such frame decides.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("tracing, metrics, access log", ("opentelemetry", "prometheus", "instruments.py", "access.py", "logging/")),
    ("HTTP server and ASGI stack (uvicorn, h11, starlette, BentoML routing)",
     ("uvicorn/", "h11/", "starlette/", "_bentoml_impl/server/app.py", "lungct/middleware.py")),
    ("numpy", ("numpy/",)),
]
OTHER = "other (asyncio event loop, anyio threads)"


def categorize(stack: str) -> str:
    for category, needles in OWNING:
        if any(needle in stack for needle in needles):
            return category
    for frame in reversed(stack.split(";")):
        for category, needles in LAYERS:
            if any(needle in frame for needle in needles):
                return category
    return OTHER


# A thread waiting (event loop in select, worker threads on their queue) is not using CPU.
IDLE_LEAVES = {("select", "selectors.py"), ("poll", "selectors.py"), ("wait", "threading.py"), ("get", "queue.py")}


def is_idle(leaf: str) -> bool:
    """`leaf` is a py-spy frame "Class.function (path/file.py:line)"."""
    function, _, where = leaf.partition(" (")
    return (function.split(".")[-1], where.split(":")[0].split("/")[-1]) in IDLE_LEAVES


def summarize(raw: Path) -> dict:
    """Collapsed stacks ("frame;frame;... count" per line) -> share of busy samples per category, top leaves."""
    categories, leaves, total, idle = Counter(), Counter(), 0, 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        if is_idle(stack.split(";")[-1]):
            idle += n
            continue
        total += n
        categories[categorize(stack)] += n
        leaf = stack.split(";")[-1]
        leaves[leaf.split(" (")[0] + " (" + leaf.split(" (")[-1].split("/")[-1]] += n
    return {"samples": total, "idle_samples_left_out": idle,
            "categories": {k: round(100 * v / total, 1) for k, v in categories.most_common()} if total else {},
            "top_leaf_functions": {k: round(100 * v / total, 1) for k, v in leaves.most_common(15)} if total else {}}


def record(pids: dict[str, int], out: Path, rate: int) -> dict[str, subprocess.Popen]:
    py_spy = shutil.which("py-spy", path=str(Path(__import__("sys").executable).parent)) or "py-spy"
    return {role: subprocess.Popen([py_spy, "record", "--format", "raw", "--nonblocking", "--rate", str(rate),
                                    "--pid", str(pid), "--output", str(out / f"profile-{role}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for role, pid in pids.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--service-dir", default=str(ROOT))
    parser.add_argument("--home", help="BENTOML_HOME to import the model into (default: a new temporary folder)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    env, tag = fresh_store(args.home)
    files, described = ct_files(128)
    extra = dict(item.split("=", 1) for item in args.env)
    with Server(env={**env, "LUNGCT_MODEL_TAG": tag, **extra}, cwd=args.service_dir) as server:
        procs = service_processes(server)
        load(server.url, files, 300, args.concurrency, client="aiohttp")
        recorders = record({role: procs[role].pid for role in ("front", "model")}, out, args.rate)
        time.sleep(1.0)
        before = cpu_seconds(procs)
        run = load(server.url, files, args.requests, args.concurrency, client="aiohttp")
        after = cpu_seconds(procs)
        for proc in recorders.values():
            proc.send_signal(signal.SIGINT)
        for role, proc in recorders.items():
            _, err = proc.communicate(timeout=60)
            if proc.returncode not in (0, -signal.SIGINT, 130):
                raise RuntimeError(f"py-spy on {role} failed ({proc.returncode}): {err.decode()[-2000:]}")
    result = {"tag": tag, "images": described, "service_dir": args.service_dir, "service_env": extra,
              "load": run.summary(),
              "cpu_ms_per_request": {r: round(1000 * (after[r] - before[r]) / args.requests, 2) for r in after},
              "front": summarize(out / "profile-front.txt"), "model": summarize(out / "profile-model.txt")}
    (out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{run.summary()}\nCPU ms per request: {result['cpu_ms_per_request']}")
    for role in ("front", "model"):
        print(f"\n{role} process, {result[role]['samples']} samples:")
        for category, share in result[role]["categories"].items():
            print(f"  {share:5.1f}%  {category}")
        print("  top leaf functions:")
        for leaf, share in list(result[role]["top_leaf_functions"].items())[:10]:
            print(f"  {share:5.1f}%  {leaf}")
    return result


if __name__ == "__main__":
    main()
