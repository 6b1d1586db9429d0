"""Serving benchmark (issue 5): the service against the seed-style Flask baseline and the in-process limit.

    python -m benchmarks.bench            # `make bench`: about 5 minutes on 2 cores
    python -m benchmarks.bench --requests 100 --concurrency 1 8      # a quick look

In one run, on the same model (models/, imported with `python -m lungct.import_model` into a
fresh temporary store) and the same real CT images:
  1. the in-process limit (benchmarks/limit.py): decode + preprocess + model call, best batch size;
  2. `bentoml serve service:LungCT` (adaptive batching), concurrency 1, 8, 32, 64;
  3. paired rounds for the c=64 target: the limit at its best batch size, then the service at
     concurrency 64, several times over while the same server is up (the target is their median ratio);
  4. the Flask baseline (benchmarks/flask_app.py), the same concurrencies.
For each: throughput, p50/p95/p99, errors, RSS (end and peak) and CPU per request of every
serving process, time from start to /readyz. Writes benchmarks/results/bench.json,
benchmarks/results/bench.png and the benchmark block of BENCHMARKS.md, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess

from benchmarks.common import (PYTHON, REPORT, RESULTS, ROOT, FlaskServer, RssSampler, Server, cpu_seconds,
                               fresh_store, machine, rss_mb, service_processes, write_block)
from benchmarks.loadgen import ct_files, load

LEVELS = (1, 8, 32, 64)
PAIRED_CONCURRENCY = 64


def in_process_limit(env: dict, tag: str, files: int, images: int, batch_sizes=(8, 16, 32, 64),
                     repeats: int = 2) -> dict:
    out = subprocess.run([PYTHON, "-m", "benchmarks.limit", "--model", tag, "--files", str(files),
                          "--images", str(images), "--batch-sizes", *map(str, batch_sizes), "--repeats", str(repeats)],
                         cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def paired_rounds(server, files, rounds: int, requests: int, client: str, limit_run) -> list[dict]:
    """The c=64 target measured `rounds` times: one limit run (`limit_run()`, images/s), then the service
    at concurrency 64, alternately while the server is up. The table's limit is the best of 8 runs (4
    batch sizes x 2 repeats) taken minutes before the service's one run at c=64; on a shared host whose
    speed drifts by 10% and more between minutes, paired single runs compare like with like."""
    out = []
    for _ in range(rounds):
        limit = limit_run()
        run = load(server.url, files, requests, PAIRED_CONCURRENCY, client=client)
        out.append({"limit_images_per_s": limit, "service_rps": round(run.throughput, 2), "errors": run.error_count,
                    "ratio": round(run.throughput / limit, 3)})
        print(f"  round {len(out)}: service {run.throughput:.1f} req/s, limit {limit} img/s, "
              f"{out[-1]['ratio']:.0%}", flush=True)
    return out


def measure(server, processes, files, levels, requests: int, warmup: int, client: str, then=None) -> dict:
    """Start `server`, warm it up, then run every concurrency level (and `then(server)`, stored as
    "paired"); stop it."""
    with server:
        procs = processes(server)
        result = {"ready_seconds": round(server.ready_seconds, 2), "rss_idle_mb": rss_mb(procs), "levels": []}
        warm = load(server.url, files, warmup, 8, client=client)
        result["warmup"] = {"requests": warmup, "errors": warm.error_count}
        result["rss_after_warmup_mb"] = rss_mb(procs)
        with RssSampler(procs) as sampler:
            for concurrency in levels:
                sampler.reset()
                before = cpu_seconds(procs)
                run = load(server.url, files, requests, concurrency, client=client)
                after = cpu_seconds(procs)
                level = run.summary()
                level["rss_mb"] = rss_mb(procs)
                level["rss_peak_mb"] = sampler.peak()
                level["cpu_ms_per_request"] = {r: round(1000 * (after[r] - before[r]) / requests, 2) for r in after}
                level["error_samples"] = run.errors[:5]
                result["levels"].append(level)
                print(f"  c={concurrency:<3} {level['throughput_rps']:8.1f} req/s  p50 {level['p50_ms']:8.1f} ms  "
                      f"p99 {level['p99_ms']:8.1f} ms  errors {level['errors']}", flush=True)
        if then is not None:
            result["paired"] = then(server)
    return result


def at(system: dict, concurrency: int) -> dict | None:
    return next((lvl for lvl in system["levels"] if lvl["concurrency"] == concurrency), None)


def targets(results: dict) -> list[dict]:
    service, flask, limit = results["service"], results.get("flask"), results["limit"]
    out = []

    def add(name, value, threshold, passed):
        out.append({"target": name, "measured": value, "threshold": threshold,
                    "pass": None if passed is None else bool(passed)})

    s32, s64, paired = at(service, 32), at(service, 64), service.get("paired")
    f32 = at(flask, 32) if flask else None
    if s32 and f32:
        ratio = s32["throughput_rps"] / f32["throughput_rps"]
        add("c=32: service throughput / Flask throughput", round(ratio, 2), ">= 3", ratio >= 3)
        add("c=32: service p99 vs Flask p50 (ms)", f"{s32['p99_ms']} vs {f32['p50_ms']}", "service p99 < Flask p50",
            s32["p99_ms"] < f32["p50_ms"])
    if paired:
        median = statistics.median(r["ratio"] for r in paired)
        add(f"c=64: service throughput / in-process limit, median of {len(paired)} paired rounds",
            f"{median:.0%} (rounds: {', '.join(format(r['ratio'], '.0%') for r in paired)})", ">= 70%", median >= 0.7)
    if s64:
        share = s64["throughput_rps"] / limit["images_per_s"]
        name = "c=64: service throughput / in-process limit, the table's single runs"
        add(name + (" (reported)" if paired else ""),
            f"{share:.0%} ({s64['throughput_rps']} of {limit['images_per_s']} img/s, the best limit run)",
            "-" if paired else ">= 70%", None if paired else share >= 0.7)
    errors = sum(lvl["errors"] for lvl in service["levels"]) + sum(r["errors"] for r in paired or [])
    add("service errors, all concurrencies", errors, "0", errors == 0)
    if flask:
        flask_errors = sum(lvl["errors"] for lvl in flask["levels"])
        add("Flask errors, all concurrencies (reported)", flask_errors, "-", None)
    for name, system in (("service", service), ("Flask", flask)):
        if system and at(system, 1):
            add(f"{name} p50 at c=1 (ms, reported)", at(system, 1)["p50_ms"], "-", None)
        if system:
            add(f"{name} start to /readyz (s, reported)", system["ready_seconds"], "-", None)
    return out


def _mb(values: dict) -> str:
    return ", ".join(f"{role} {mb:.0f}" for role, mb in values.items())


def table(results: dict) -> str:
    lines = ["| system | concurrency | requests | throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) | errors "
             "| peak RSS (MB) | CPU per request (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for key, label in (("service", "service (bentoml, adaptive batching)"), ("flask", "Flask baseline")):
        system = results.get(key)
        for lvl in system["levels"] if system else []:
            lines.append(f"| {label} | {lvl['concurrency']} | {lvl['requests']} | {lvl['throughput_rps']:.1f} | "
                         f"{lvl['p50_ms']:.1f} | {lvl['p95_ms']:.1f} | {lvl['p99_ms']:.1f} | {lvl['errors']} | "
                         f"{_mb(lvl['rss_peak_mb'])} | {', '.join(f'{r} {v}' for r, v in lvl['cpu_ms_per_request'].items())} |")
    for run in results["limit"]["runs"]:
        lines.append(f"| in-process limit, batch {run['batch_size']} | - | {run['images']} | {run['images_per_s']:.1f} "
                     f"| - | - | - | - | - | decode+preprocess {run['decode_preprocess_ms_per_image']}, "
                     f"model {run['model_ms_per_image']} |")
    return "\n".join(lines)


def targets_table(rows: list[dict]) -> str:
    lines = ["| target | measured | threshold | result |", "|---|---|---|---|"]
    for row in rows:
        verdict = {True: "**pass**", False: "**FAIL**", None: "reported"}[row["pass"]]
        lines.append(f"| {row['target']} | {row['measured']} | {row['threshold']} | {verdict} |")
    return "\n".join(lines)


def paired_text(paired: list[dict] | None, batch_size: int) -> str:
    if not paired:
        return ""
    rounds = "; ".join(f"{r['service_rps']} req/s against {r['limit_images_per_s']} img/s ({r['ratio']:.0%})"
                       for r in paired)
    return f"""
Paired rounds for the c=64 target (the limit at batch size {batch_size}, one run, then the service at
concurrency {PAIRED_CONCURRENCY}, one run, while the same server is up): {rounds}.
"""


def markdown(results: dict) -> str:
    service, flask = results["service"], results.get("flask")
    rss = [f"- service: idle {_mb(service['rss_idle_mb'])} MB; after warm-up {_mb(service['rss_after_warmup_mb'])} MB"]
    if flask:
        rss.append(f"- Flask: idle {_mb(flask['rss_idle_mb'])} MB; after warm-up {_mb(flask['rss_after_warmup_mb'])} MB")
    cfg = results["config"]
    return f"""## Serving benchmark (`make bench`)

Run {results['machine']['date']} on {results['machine']['cpus']} CPU cores ({results['machine']['platform']}),
load average at start {results['machine']['load_average_at_start']}; model `{results['tag']}`;
images: {results['images']}; {cfg['requests']} requests per concurrency level after {cfg['warmup']} warm-up
requests; load generator: {cfg['client']} in the same machine (it shares the 2 cores with the server).
Service settings: {cfg['service_env'] or 'defaults'}. RSS in MB (`serve_cli` is the `bentoml serve`
supervisor, `front` decodes and preprocesses, `model` runs TensorFlow). CPU per request is the process's
user+system CPU time over the level divided by its requests.

{table(results)}

Time from start to `/readyz`: service {service['ready_seconds']} s, Flask {flask['ready_seconds'] if flask else '-'} s.
In-process limit: {results['limit']['images_per_s']} images/s at batch size {results['limit']['best_batch_size']}
(one process, decode and preprocess one image after the other, then one model call per batch).
{paired_text(service.get('paired'), results['limit']['best_batch_size'])}
RSS:
{chr(10).join(rss)}

### Targets (issue 5)

{targets_table(results['targets'])}

![throughput and p99 against concurrency](benchmarks/results/bench.png)
"""


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label, style in (("service", "service (bentoml)", "o-"), ("flask", "Flask baseline", "s--")):
        system = results.get(key)
        if not system:
            continue
        c = [lvl["concurrency"] for lvl in system["levels"]]
        left.plot(c, [lvl["throughput_rps"] for lvl in system["levels"]], style, label=label)
        right.plot(c, [lvl["p99_ms"] for lvl in system["levels"]], style, label=label)
    left.axhline(results["limit"]["images_per_s"], color="grey", linestyle=":",
                 label=f"in-process limit (batch {results['limit']['best_batch_size']})")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(LEVELS), [str(c) for c in LEVELS])
        ax.set_xlabel("concurrency")
        ax.grid(alpha=0.3)
        ax.legend()
    left.set_ylabel("throughput (requests/s)")
    left.set_ylim(bottom=0)
    right.set_ylabel("p99 latency (ms)")
    right.set_yscale("log")
    fig.suptitle(f"LungCT serving, {results['machine']['cpus']} CPU cores, model {results['tag']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=800, help="requests per concurrency level")
    parser.add_argument("--warmup", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--files", type=int, default=128, help="distinct CT images to cycle through")
    parser.add_argument("--limit-images", type=int, default=512, help="images per in-process timed run")
    parser.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp")
    parser.add_argument("--paired-rounds", type=int, default=5, help="rounds of limit + service at c=64 (0: none)")
    parser.add_argument("--skip-flask", action="store_true")
    parser.add_argument("--flask-call", choices=("predict", "compiled"), default="predict")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of `bentoml serve` (LUNGCT_MAX_BATCH_SIZE=64, ...)")
    parser.add_argument("--service-dir", default=str(ROOT), help="directory to `bentoml serve` from (a scratch copy)")
    parser.add_argument("--home", help="BENTOML_HOME to import the model into (default: a new temporary folder)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for bench.json and bench.png")
    parser.add_argument("--no-report", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)

    env, tag = fresh_store(args.home)
    files, described = ct_files(args.files)
    extra = dict(item.split("=", 1) for item in args.env)
    results = {"machine": machine(), "tag": tag, "images": described,
               "config": {"requests": args.requests, "warmup": args.warmup, "client": args.client,
                          "concurrency": args.concurrency, "service_env": extra, "flask_call": args.flask_call,
                          "service_dir": args.service_dir}}
    print(f"model {tag}; {described}", flush=True)
    print("in-process limit ...", flush=True)
    results["limit"] = in_process_limit(env, tag, args.files, args.limit_images)
    print(f"  {results['limit']['images_per_s']} images/s at batch {results['limit']['best_batch_size']}", flush=True)

    print("service (bentoml serve) ...", flush=True)
    server = Server(env={**env, "LUNGCT_MODEL_TAG": tag, **extra}, cwd=args.service_dir)
    best = results["limit"]["best_batch_size"]

    def paired(running) -> list[dict]:
        print(f"paired rounds (limit at batch {best}, service at c={PAIRED_CONCURRENCY}) ...", flush=True)
        return paired_rounds(running, files, args.paired_rounds, args.requests, args.client, lambda: in_process_limit(
            env, tag, args.files, args.limit_images, (best,), repeats=1)["images_per_s"])

    results["service"] = measure(server, service_processes, files, args.concurrency, args.requests, args.warmup,
                                 args.client, then=paired if args.paired_rounds else None)
    if not args.skip_flask:
        print("Flask baseline ...", flush=True)
        results["flask"] = measure(FlaskServer(tag, env, args.flask_call), lambda s: s.processes(), files,
                                   args.concurrency, args.requests, args.warmup, args.client)
    results["targets"] = targets(results)

    out = ROOT / args.out  # an absolute --out stays absolute
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=lambda x: None if isinstance(x, float)
                                               and math.isnan(x) else str(x)) + "\n")
    plot(results, out / "bench.png")
    if not args.no_report:
        write_block("bench", markdown(results), REPORT)
    print()
    print(table(results))
    print()
    print(targets_table(results["targets"]))
    return results


if __name__ == "__main__":
    main()
