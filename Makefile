# LungCT: every target creates .venv and installs what it needs on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/chest-ctscan-images/Data
PORT ?= 3000
export BENTOML_DO_NOT_TRACK := True
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: serve test train evaluate import-model bento clean
.PHONY: image image-test bench soak

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

## serve: import the shipped model into the local store when missing, then `bentoml serve` on $(PORT)
serve: install import-model
	$(BIN)/bentoml serve service:LungCT --port $(PORT) --timeout-keep-alive 75

import-model: install
	$(BIN)/python -m lungct.import_model

## test: the whole test suite (real bentoml serve, real model store, real images)
test: install
	$(BIN)/python -m pytest

## train: train the shipped model's recipe on the Kaggle data and save it into the store
train: install
	$(BIN)/python -m training.train --data $(DATA)

evaluate: install
	$(BIN)/python -m training.evaluate --data $(DATA) --split valid

bento: install import-model
	$(BIN)/bentoml build

clean:
	rm -rf $(VENV) runs .pytest_cache

## image: OCI image of the bento, tagged with its version (scripts/image.sh: LUNGCT_BASE, LUNGCT_CA_CERTS, ...)
image: bento
	scripts/image.sh

## image-test: run the image with podman and check it against a local serve of the same bento
image-test: image
	scripts/image_test.sh

## bench: serving benchmark (service vs Flask baseline vs in-process limit); writes BENCHMARKS.md and benchmarks/results/
bench: install
	$(BIN)/python -m benchmarks.bench

## soak: 20,000 requests at concurrency 32 against bentoml serve; zero errors, RSS within 10% (several minutes)
soak: install
	$(BIN)/python -m benchmarks.soak
