#!/usr/bin/env bash
# `make image-test`: run the image built by scripts/image.sh with podman and check it
# (scripts/image_test.py says what is checked). Usage: scripts/image_test.sh [IMAGE]
set -euo pipefail
LUNGCT_ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$LUNGCT_ROOT"
# shellcheck source=scripts/podman-env.sh
source scripts/podman-env.sh
ensure_container_tools
setup_podman_conf
export BENTOML_DO_NOT_TRACK=True TF_CPP_MIN_LOG_LEVEL=2
started=$(date +%s)
"${PYTHON:-$LUNGCT_ROOT/.venv/bin/python}" scripts/image_test.py "$@"
log "image test took $(( $(date +%s) - started )) s"
