"""`bentoml build` works offline and `bentoml serve <bento>` serves from the built bento."""

import os
import subprocess
import sys
from pathlib import Path

import httpx

from lungct.store import SHIPPED_DIR
from tests.server import ROOT, Server

BIN = Path(sys.executable).parent


def test_built_bento_serves(tmp_path, sample_files, shipped_tag):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home")}
    run = lambda *cmd: subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)  # noqa: E731
    assert shipped_tag in run(str(BIN / "python"), "-m", "lungct.import_model").stdout
    run(str(BIN / "bentoml"), "build")
    listed = run(str(BIN / "bentoml"), "list", "-o", "json").stdout
    assert '"lungct:' in listed
    bento_dir = next((tmp_path / "home" / "bentos" / "lungct").glob("*/bento.yaml")).parent
    bento_yaml = (bento_dir / "bento.yaml").read_text()
    assert shipped_tag in bento_yaml, "the bento references the shipped model"
    assert (bento_dir / "src" / "lungct" / "preprocess.py").exists() and (bento_dir / "src" / "service.py").exists()
    assert not (bento_dir / "src" / "tests").exists()
    stored = tmp_path / "home" / "models" / "lungct" / shipped_tag.split(":")[1]
    assert (stored / "MODEL_CARD.md").read_text() == (SHIPPED_DIR / "MODEL_CARD.md").read_text(), \
        "the model card sits beside the weights in the store (the bento's images copy that folder)"

    with Server(target="lungct:latest", env={"BENTOML_HOME": env["BENTOML_HOME"]}, cwd=tmp_path) as server:
        response = httpx.post(f"{server.url}/predict", files={"image": ("x.png", sample_files[0].read_bytes())},
                              timeout=60)  # a first prediction can take over 5 s on a loaded machine
        assert response.status_code == 200, response.text
        assert response.json()["model"] == shipped_tag
        spec = httpx.get(f"{server.url}/docs.json").json()
        assert "Research use only, not for diagnosis" in spec["info"]["description"]
