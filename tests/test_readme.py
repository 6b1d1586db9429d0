"""The README's API examples run as written (against a real server on a free port)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.server import ROOT

README = (ROOT / "README.md").read_text()
DEFAULT_URL = "http://127.0.0.1:3000"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_python_client_examples_run(server, sample_files):
    examples = [b for b in blocks("python") if DEFAULT_URL in b]
    assert len(examples) >= 2
    for code in examples:
        result = subprocess.run([sys.executable, "-c", code.replace(DEFAULT_URL, server.url)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip()
        if "asyncio.gather" in code:  # one answer per sample, however the concurrent calls interleave
            assert len(result.stdout.splitlines()) == len(sample_files)


def test_curl_examples_run(server):
    commands = [line for b in blocks("bash") for line in b.replace("\\\n", " ").splitlines()
                if line.startswith("curl ") and DEFAULT_URL in line]
    assert len(commands) >= 3
    for command in commands:
        command = command.split("#")[0].replace(DEFAULT_URL, server.url) + " --fail-with-body -s"
        result = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        json.loads(result.stdout)
