"""schemathesis against the running service's own OpenAPI document (GET /docs.json), bounded for CI.

Every operation in the document gets generated requests (the examples, coverage and fuzzing
phases; valid and invalid multipart forms, odd headers). Every answer must come within the
request time limit, never be a 5xx, and match the document: status code, content type, headers
and body schema.

Left out on purpose: the `positive_data_acceptance` and `negative_data_rejection` checks. The
document BentoML writes says that a form with extra fields, or `images` as an empty list, is
valid; the upload guard rejects both with a documented 400 (one file field and nothing else),
which is the intended behaviour.

schemathesis runs as its CLI: its pytest plugin (4.32) does not work with pytest 9
(`'Function' object has no attribute '_nodeid'`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance"]
MAX_EXAMPLES = 100  # per operation and phase: well under a minute on 2 cores
REQUEST_TIMEOUT_S = 15  # no answer by then is a hang, reported as an error


def test_the_document_lists_the_public_endpoints(server):
    paths = httpx.get(f"{server.url}/docs.json", timeout=10).json()["paths"]
    assert {"/predict", "/predict_batch", "/readyz", "/livez"} <= set(paths)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, tmp_path):
    report = tmp_path / "schemathesis.json"
    command = [str(SCHEMATHESIS), "run", f"{server.url}/docs.json", "--checks", ",".join(CHECKS),
               "--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES),
               "--request-timeout", str(REQUEST_TIMEOUT_S), "--seed", "20261130", "--generation-deterministic",
               "--continue-on-failure", "--no-color", "--output-truncate", "false",
               "--report", "json", "--report-json-path", str(report)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = result.stdout + result.stderr
    details = output[output.find("====") :] if "====" in output else output[-6000:]
    assert report.exists(), output[-3000:]
    summary = json.loads(report.read_text())
    assert summary["complete"] and summary["test_cases"]["generated"] > 0, details[-3000:]
    assert result.returncode == 0 and not summary["errors"], f"schemathesis found problems:\n{details[-12000:]}"
