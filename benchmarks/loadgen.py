"""Async httpx load generator: POST real CT images to /predict at a fixed concurrency."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return len(self.errors)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency, "requests": self.requests, "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.throughput, 2), "p50_ms": round(self.percentile(50), 2),
            "p95_ms": round(self.percentile(95), 2), "p99_ms": round(self.percentile(99), 2),
            "errors": self.error_count, "statuses": dict(self.statuses),
        }


async def _worker(client, url, payloads, counter, result: LoadResult, field_name: str) -> None:
    for index in counter:
        name, data = payloads[index % len(payloads)]
        start = time.perf_counter()
        try:
            response = await client.post(url, files={field_name: (name, data, "application/octet-stream")})
            result.statuses[response.status_code] += 1
            if response.status_code != 200:
                result.errors.append(f"{response.status_code} {response.text[:200]}")
        except httpx.HTTPError as exc:
            result.statuses["exception"] += 1
            result.errors.append(f"{type(exc).__name__} after {time.perf_counter() - start:.3f}s: {exc}")
        result.latencies_ms.append((time.perf_counter() - start) * 1000)


async def run_load(base_url: str, files: list[Path], requests: int, concurrency: int,
                   route: str = "/predict", field_name: str = "image", timeout: float = 120.0) -> LoadResult:
    """Send `requests` uploads with `concurrency` in flight; every file is read once up front."""
    payloads = [(Path(f).name, Path(f).read_bytes()) for f in files]
    counter = iter(range(requests))
    result = LoadResult(concurrency=concurrency, requests=requests, seconds=0.0)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(_worker(client, route, payloads, counter, result, field_name)
                               for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result


def load(base_url: str, files: list[Path], requests: int, concurrency: int, **kw) -> LoadResult:
    return asyncio.run(run_load(base_url, files, requests, concurrency, **kw))


def cycle_files(folder: Path, limit: int = 64) -> list[Path]:
    return list(itertools.islice(sorted(p for p in Path(folder).rglob("*") if p.is_file()), limit))
