"""The benchmark machinery runs end to end on a few requests, so it cannot rot. No timing asserts."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench, soak
from benchmarks.common import Server, service_processes, write_block
from benchmarks.loadgen import ct_files, load, multipart
from benchmarks.profile_service import categorize, is_idle, summarize


@pytest.mark.parametrize("client", ["httpx", "aiohttp"])
def test_load_generator_against_the_service(server, sample_files, client):
    result = load(server.url, sample_files, requests=24, concurrency=4, client=client)
    assert result.error_count == 0, result.errors[:3]
    assert dict(result.statuses) == {200: 24}
    assert len(result.latencies_ms) == 24 and result.throughput > 0
    summary = result.summary()
    assert {"throughput_rps", "p50_ms", "p95_ms", "p99_ms", "errors", "statuses"} <= set(summary)
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"]


def test_load_generator_counts_rejections_as_errors(server, sample_files):
    result = load(server.url, sample_files[:1], requests=3, concurrency=1, route="/predict", field_name="wrong",
                  client="aiohttp")
    assert result.statuses[400] == 3 and result.error_count == 3


def test_multipart_body_is_one_file_field():
    content_type, body = multipart("image", "a.png", b"\x89PNG data")
    boundary = content_type.split("boundary=")[1]
    assert body.startswith(f"--{boundary}\r\n".encode()) and body.endswith(f"--{boundary}--\r\n".encode())
    assert b'name="image"; filename="a.png"' in body and b"\x89PNG data" in body


def test_ct_files_falls_back_to_the_samples(tmp_path):
    files, described = ct_files(8, data=tmp_path / "absent")
    assert files and all(f.suffix == ".png" for f in files) and "samples" in described


def test_serving_processes_are_found(server):
    found = service_processes(server)
    assert {"serve_cli", "front", "model"} <= set(found)
    assert found["front"].pid != found["model"].pid


def test_bench_end_to_end_on_a_few_requests(tmp_path):
    """Fresh store, in-process limit, bentoml serve and the Flask baseline: every piece runs."""
    results = bench.main(["--requests", "12", "--warmup", "4", "--concurrency", "1", "4", "--files", "8",
                          "--limit-images", "16", "--paired-rounds", "2", "--out", str(tmp_path / "out"),
                          "--home", str(tmp_path / "home"), "--no-report"])
    for name in ("service", "flask"):
        levels = results[name]["levels"]
        assert [lvl["concurrency"] for lvl in levels] == [1, 4]
        assert all(lvl["errors"] == 0 and lvl["statuses"] == {200: 12} for lvl in levels), levels
        assert results[name]["ready_seconds"] > 0
    assert set(results["service"]["levels"][0]["rss_peak_mb"]) >= {"front", "model"}
    assert set(results["flask"]["levels"][0]["rss_peak_mb"]) == {"flask"}
    assert {run["batch_size"] for run in results["limit"]["runs"]} == {8, 16, 32, 64}
    paired = results["service"]["paired"]  # limit and service at c=64, alternately, with the server up
    assert len(paired) == 2 and all(r["errors"] == 0 and r["limit_images_per_s"] > 0 for r in paired), paired
    # ratio is from the unrounded throughput; service_rps is rounded to 0.01
    assert all(r["ratio"] == pytest.approx(r["service_rps"] / r["limit_images_per_s"], abs=1e-3) for r in paired)
    target = next(t for t in results["targets"] if "median of 2 paired rounds" in t["target"])
    assert target["pass"] == (sum(r["ratio"] for r in paired) / 2 >= 0.7)  # the median of two
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert saved["tag"] == results["tag"] and (tmp_path / "out" / "bench.png").stat().st_size > 0
    markdown = bench.markdown(results)
    assert "| service (bentoml, adaptive batching) | 4 |" in markdown and "Targets" in markdown


def test_soak_machinery(shipped_tag, sample_files):
    result = soak.soak(Server(env={"LUNGCT_MODEL_TAG": shipped_tag}), sample_files, requests=40, warmup=8,
                       concurrency=4, chunk=20, client="aiohttp", settle=0.5)
    assert result["errors"] == 0 and result["statuses"] == {"200": 40}
    assert [c["requests_done"] for c in result["chunks"]] == [20, 40]
    assert set(result["rss_drift"]) >= {"front", "model"}
    for role, (low, high) in result["rss_idle_range_mb"].items():  # the end reading is the last idle reading
        assert low <= result["rss_end_mb"][role] <= high == max(c["rss_idle_mb"][role] for c in result["chunks"])
    warm = result["warmup"]
    assert warm["errors"] == 0 and warm["requests"] == 8 * warm["rounds"]
    assert warm["rounds"] == 5 or not warm["workers_not_served"]  # repeated only while a worker had served none
    assert "Soak" in soak.markdown({**result, "machine": {"date": "-", "cpus": 2, "load_average_at_start": []},
                                    "tag": shipped_tag, "images": "samples"})


def test_idle_trend_is_the_slope_per_10k_requests():
    assert soak.idle_trend([100.0, 101.0, 102.0], [1000, 2000, 3000]) == 10.0
    assert soak.idle_trend([120.0, 140.0, 120.0, 140.0], [1000, 2000, 3000, 4000]) == 40.0
    assert soak.idle_trend([130.0], [1000]) == 0.0


def test_report_blocks_replace_only_their_own_section(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n\n## Profile\nhand-written\n")
    write_block("bench", "## Serving benchmark\nfirst", report)
    write_block("soak", "## Soak\nfirst", report)
    write_block("bench", "## Serving benchmark\nsecond", report)
    text = report.read_text()
    assert "hand-written" in text and "second" in text and "## Soak\nfirst" in text
    assert text.count("## Serving benchmark") == 1 and "\nfirst" not in text.split("## Soak")[0]


def test_profile_summary(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "main (a.py:1);load_tensor (lungct/preprocess.py:9);decode_image (lungct/decode.py:40);load (PIL/ImageFile.py:1) 6\n"
        "main (a.py:1);Function.__call__ (tensorflow/python/x.py:3) 3\n"
        "main (a.py:1);EpollSelector.select (selectors.py:468) 50\n"
        "main (a.py:1);UploadGuard.__call__ (lungct/middleware.py:70) 1\n")
    summary = summarize(raw)
    assert summary["samples"] == 10 and summary["idle_samples_left_out"] == 50
    assert summary["categories"]["decode (Pillow / pydicom, lungct/decode.py)"] == 60.0
    assert categorize("x (tensorflow/y.py:1)") == "model call (TensorFlow)"
    assert is_idle("Condition.wait (threading.py:327)") and not is_idle("ImageFile.load (PIL/ImageFile.py:412)")
