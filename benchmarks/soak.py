"""Soak (issue 6): 20,000 requests at concurrency 32 with real CT images against `bentoml serve`.

    python -m benchmarks.soak             # `make soak`: several minutes
    python -m benchmarks.soak --requests 2000 --warmup 200 --chunk 500     # a quick look

After `--warmup` requests (not counted; repeated, up to 5 times, until every front worker has served
part of them, since connections spread over the workers unevenly), sends `--requests` more in chunks and records, after
every chunk, the RSS of every serving process, the chunk's throughput, latency and errors.
Passes when there are no errors at all and every process's RSS at the end is within 10% of
its value after the warm-up (both read with the server idle for `--settle` seconds).
Writes benchmarks/results/soak.json, benchmarks/results/soak.png and the soak block of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import (REPORT, RESULTS, ROOT, Server, cpu_seconds, fresh_store, machine, rss_mb,
                               service_processes, write_block)
from benchmarks.loadgen import ct_files, load

TOLERANCE = 0.10
# idle this long before each RSS reading: a front frees a burst's pooled model connections (and their
# buffers) only once they have been idle for LUNGCT_MODEL_KEEPALIVE_S (4 s), checked at most that often,
# and hands the memory back at its next trim (every second); read sooner, the reading still holds them
SETTLE_S = 12.0
SERVED_CPU_S = 1.0  # CPU seconds a front worker spends on a few hundred requests; an idle one spends far less


def warm_up(procs: dict, url: str, files, requests: int, concurrency: int, client: str, rounds: int = 5) -> dict:
    """Send `requests` warm-up requests, again (at most `rounds` times) while a front worker has not served any."""
    before, errors = cpu_seconds(procs), []
    for done in range(1, rounds + 1):
        run = load(url, files, requests, concurrency, client=client)
        errors += run.errors
        used = cpu_seconds(procs)
        idle = [role for role in procs if role.startswith("front") and used[role] - before[role] < SERVED_CPU_S]
        if not idle:
            break
    return {"requests": requests * done, "rounds": done, "workers_not_served": idle, "errors": len(errors),
            "error_samples": errors[:5]}


def soak(server: Server, files, requests: int, warmup: int, concurrency: int, chunk: int, client: str,
         settle: float = SETTLE_S) -> dict:
    with server:
        procs = service_processes(server)
        result = {"ready_seconds": round(server.ready_seconds, 2), "rss_idle_mb": rss_mb(procs), "settle_s": settle}
        result["warmup"] = warm = warm_up(procs, server.url, files, warmup, concurrency, client)
        time.sleep(settle)  # the RSS of the idle server, once nothing is in flight
        result["rss_after_warmup_mb"] = baseline = rss_mb(procs)
        print(f"after {warm['requests']} warm-up requests: RSS {baseline} MB", flush=True)
        chunks, latencies, statuses, errors, done = [], [], {}, [], 0
        started = time.perf_counter()
        while done < requests:
            n = min(chunk, requests - done)
            run = load(server.url, files, n, concurrency, client=client)
            done += n
            latencies += run.latencies_ms
            errors += run.errors
            for status, count in run.statuses.items():
                statuses[str(status)] = statuses.get(str(status), 0) + count
            row = {"requests_done": done, **{k: v for k, v in run.summary().items() if k != "statuses"},
                   "rss_mb": rss_mb(procs)}
            time.sleep(settle)
            row["rss_idle_mb"] = rss_mb(procs)
            chunks.append(row)
            print(f"  {done:6d} requests: {row['throughput_rps']:6.1f} req/s  p99 {row['p99_ms']:7.1f} ms  "
                  f"errors {row['errors']}  RSS {row['rss_mb']} idle {row['rss_idle_mb']}", flush=True)
        seconds = time.perf_counter() - started - settle * len(chunks)
        end = chunks[-1]["rss_idle_mb"]
    import numpy as np

    drift = {role: round((end[role] - baseline[role]) / baseline[role], 4) for role in baseline}
    peak = {role: max(c["rss_mb"][role] for c in chunks) for role in baseline}
    idle = {role: [c["rss_idle_mb"][role] for c in chunks] for role in baseline}
    result.update({
        "requests": requests, "concurrency": concurrency, "seconds": round(seconds, 1),
        "throughput_rps": round(requests / seconds, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2), "p95_ms": round(float(np.percentile(latencies, 95)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2), "max_ms": round(max(latencies), 2),
        "errors": len(errors), "error_samples": errors[:10], "statuses": statuses,
        "rss_end_mb": end, "rss_peak_mb": peak, "rss_drift": drift,
        "rss_idle_range_mb": {role: (min(v), max(v)) for role, v in idle.items()},
        "rss_idle_trend_mb_per_10k": {role: idle_trend(v, [c["requests_done"] for c in chunks]) for role, v in idle.items()},
        "chunks": chunks,
    })
    result["pass"] = {"zero_errors": len(errors) == 0 and warm["errors"] == 0,
                      "rss_within_10pct": all(abs(d) <= TOLERANCE for d in drift.values())}
    return result


def idle_trend(readings: list[float], done: list[int]) -> float:
    """Least-squares slope of the idle RSS readings, in MB per 10,000 requests (0 with fewer than two)."""
    import numpy as np

    return round(float(np.polyfit(done, readings, 1)[0]) * 10_000, 2) if len(readings) > 1 else 0.0


def markdown(r: dict) -> str:
    rows = ["| process | idle | after warm-up | peak | end | end vs after warm-up | idle after each chunk | trend (MB / 10k) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for role in r["rss_after_warmup_mb"]:
        low, high = r["rss_idle_range_mb"][role]
        rows.append(f"| {role} | {r['rss_idle_mb'][role]:.1f} | {r['rss_after_warmup_mb'][role]:.1f} | "
                    f"{r['rss_peak_mb'][role]:.1f} | {r['rss_end_mb'][role]:.1f} | {r['rss_drift'][role]:+.1%} | "
                    f"{low:.1f}–{high:.1f} | {r['rss_idle_trend_mb_per_10k'][role]:+.1f} |")
    verdict = lambda ok: "**pass**" if ok else "**FAIL**"  # noqa: E731
    return f"""## Soak (`make soak`)

Run {r['machine']['date']} on {r['machine']['cpus']} CPU cores, load average at start {r['machine']['load_average_at_start']};
model `{r['tag']}`; images: {r['images']}. `bentoml serve` (default settings) ready in {r['ready_seconds']} s;
{r['warmup']['requests']} warm-up requests ({r['warmup']['rounds']} round(s); front workers that served none of them:
{r['warmup']['workers_not_served'] or 'none'}), then **{r['requests']} requests at concurrency {r['concurrency']}**
in {r['seconds']} s: {r['throughput_rps']} req/s, p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, p99 {r['p99_ms']} ms,
max {r['max_ms']} ms; statuses {r['statuses']}; errors {r['errors']} (warm-up: {r['warmup']['errors']}).

RSS in MB ("after warm-up", "end" and "idle after each chunk" read with the server idle for {r['settle_s']} s;
"peak" is the highest reading taken right after each chunk of {r['chunks'][0]['requests']} requests, under load's
aftermath; "trend" is the least-squares slope of the idle readings, the figure a leak would move):

{chr(10).join(rows)}

- zero errors: {verdict(r['pass']['zero_errors'])}
- RSS of every serving process at the end within 10% of its value after warm-up: {verdict(r['pass']['rss_within_10pct'])}

![RSS during the soak](benchmarks/results/soak.png)
"""


def plot(r: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    done = [c["requests_done"] for c in r["chunks"]]
    for role in r["rss_after_warmup_mb"]:
        line, = left.plot(done, [c["rss_mb"][role] for c in r["chunks"]], label=f"{role} (after a chunk)")
        left.plot(done, [c["rss_idle_mb"][role] for c in r["chunks"]], "--", color=line.get_color(), label=f"{role} (idle)")
    left.set_xlabel("requests after warm-up")
    left.set_ylabel("RSS (MB)")
    left.set_ylim(bottom=0)
    left.legend(fontsize=7, ncol=2)
    right.plot(done, [c["throughput_rps"] for c in r["chunks"]], label="throughput (req/s)")
    right.plot(done, [c["p99_ms"] / 10 for c in r["chunks"]], label="p99 (ms / 10)")
    right.set_xlabel("requests after warm-up")
    right.set_ylim(bottom=0)
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(f"soak: {r['requests']} requests at concurrency {r['concurrency']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=3_000,
                        help="requests before the first reading (a front's idle RSS can still rise over its "
                             "first 2,000 or so; BENCHMARKS.md, soak history)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=1_000, help="requests between RSS readings")
    parser.add_argument("--settle", type=float, default=SETTLE_S,
                        help="seconds idle before each RSS reading (after warm-up, after each chunk)")
    parser.add_argument("--files", type=int, default=256, help="distinct CT images to cycle through")
    parser.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of `bentoml serve`")
    parser.add_argument("--service-dir", default=str(ROOT), help="directory to `bentoml serve` from (a scratch copy)")
    parser.add_argument("--home", help="BENTOML_HOME to import the model into (default: a new temporary folder)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--no-report", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)

    env, tag = fresh_store(args.home)
    files, described = ct_files(args.files)
    print(f"model {tag}; {described}", flush=True)
    result = {"machine": machine(), "tag": tag, "images": described, "client": args.client}
    extra = dict(item.split("=", 1) for item in args.env)
    result["service_env"], result["service_dir"] = extra, args.service_dir
    server = Server(env={**env, "LUNGCT_MODEL_TAG": tag, **extra}, cwd=args.service_dir)
    result.update(soak(server, files, args.requests, args.warmup,
                       args.concurrency, args.chunk, args.client, args.settle))
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "soak.png")
    if not args.no_report:
        write_block("soak", markdown(result), REPORT)
    print(markdown(result))
    if not all(result["pass"].values()):
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
