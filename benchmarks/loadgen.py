"""Async load generator: POST real CT images to /predict at a fixed concurrency.

Two clients: httpx (the default of `load`, what the tests use) and aiohttp with multipart
bodies encoded once up front (`client="aiohttp"`, what the benchmark uses: about a fifth of
httpx's CPU per request, which matters when the load generator shares two cores with the server).
"""

from __future__ import annotations

import asyncio
import random
import secrets
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


def multipart(field_name: str, name: str, data: bytes) -> tuple[str, bytes]:
    """(content type, body) of a multipart/form-data upload of one file."""
    boundary = secrets.token_hex(16)
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return f"multipart/form-data; boundary={boundary}", head + data + f"\r\n--{boundary}--\r\n".encode()


async def _aiohttp_worker(session, url, bodies, counter, result: LoadResult) -> None:
    import aiohttp

    for index in counter:
        content_type, body = bodies[index % len(bodies)]
        start = time.perf_counter()
        try:
            async with session.post(url, data=body, headers={"Content-Type": content_type}) as response:
                text = await response.read()
                result.statuses[response.status] += 1
                if response.status != 200:
                    result.errors.append(f"{response.status} {text[:200]!r}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            result.statuses["exception"] += 1
            result.errors.append(f"{type(exc).__name__} after {time.perf_counter() - start:.3f}s: {exc}")
        result.latencies_ms.append((time.perf_counter() - start) * 1000)


async def _run_aiohttp(base_url, payloads, requests, concurrency, route, field_name, timeout) -> LoadResult:
    import aiohttp

    bodies = [multipart(field_name, name, data) for name, data in payloads]
    counter = iter(range(requests))
    result = LoadResult(concurrency=concurrency, requests=requests, seconds=0.0)
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(_aiohttp_worker(session, base_url.rstrip("/") + route, bodies, counter, result)
                               for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result


async def run_load(base_url: str, files: list[Path], requests: int, concurrency: int,
                   route: str = "/predict", field_name: str = "image", timeout: float = 120.0,
                   client: str = "httpx") -> LoadResult:
    """Send `requests` uploads with `concurrency` in flight; every file is read once up front."""
    payloads = [(Path(f).name, Path(f).read_bytes()) for f in files]
    if client == "aiohttp":
        return await _run_aiohttp(base_url, payloads, requests, concurrency, route, field_name, timeout)
    if client != "httpx":
        raise ValueError(f"client must be 'httpx' or 'aiohttp', not {client!r}")
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


ROOT = Path(__file__).resolve().parent.parent
KAGGLE = ROOT.parent / "shared" / "data" / "chest-ctscan-images" / "Data"
SAMPLES = ROOT / "tests" / "samples"


def ct_files(limit: int = 128, seed: int = 0, data: Path | None = None) -> tuple[list[Path], str]:
    """Real CT slices: a fixed random pick from the Kaggle train+valid splits when present, else the
    committed samples. Returns (files, description of where they came from)."""
    data = Path(data) if data else KAGGLE
    pool = sorted(p for split in ("train", "valid") for p in (data / split).rglob("*") if p.is_file()) \
        if data.is_dir() else []
    if not pool:
        return sorted(SAMPLES.glob("*/*.png")), f"{len(list(SAMPLES.glob('*/*.png')))} committed samples (tests/samples)"
    files = sorted(random.Random(seed).sample(pool, min(limit, len(pool))))
    return files, f"{len(files)} of {len(pool)} Kaggle chest CT slices (train+valid, seed {seed})"
