# Two commands do all the set-up on a fresh machine:
#   make run   install into .venv, put the embedded sample in data/raw, run `dvc repro` end to end
#   make test  install what the tests need and run pytest
# then `source .venv/bin/activate` in each shell for dvc, unet-ssl and mlflow (make's targets need no activation).
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: install run test test-slow ui paper clean-runs table1 table2 levers resolution release exps

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	@test -d .git || (git init -q && git add -A && git -c user.name=unet-ssl -c user.email=unet-ssl@localhost commit -qm "initial")
	unet-ssl data sample
	dvc repro
	@echo "done: see reports/pipeline.md, metrics/evaluate.json; browse runs with 'make ui'"

test: install
	pytest

test-slow: install
	pytest -m slow

# The MLflow UI, light: one worker, and no job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false; it serves
# GenAI jobs this project never runs). It first prints the address of the experiment's Model training view.
ui: install
	@echo "MLflow UI (Ctrl-C stops it); the runs of this project: $$(python -m unet_ssl.tracking.mlflow_runs ui-url --store sqlite:///mlruns/mlflow.db --port 5000)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000 --workers 1

paper: install
	cp profiles/paper.yaml params.yaml
	dvc repro

# `dvc exp show` for a terminal: the params.yaml values that differ between experiments and the test Jaccard
# and F1, one line per experiment, within the terminal's width. `make exps ARGS=-A` passes options to dvc exp show.
# No install prerequisite: it only reads, after the set-up.
exps:
	@python -m unet_ssl.exps $(ARGS)

# The paper's tables as a DVC grid (grid/dvc.yaml; plain `dvc repro` never runs it). grid/params.json holds
# the CPU grid profile; another one with e.g. `make table1 GRID_PROFILE=profiles/grid-paper.yaml`.
GRID_PROFILE ?=
table1 table2 levers resolution: install
	$(if $(GRID_PROFILE),unet-ssl grid use $(GRID_PROFILE))
	dvc repro grid/dvc.yaml:$@

# Publish the fine-tuned model of the (up-to-date) main pipeline as models/pets-unet.pt with its model card;
# `make release FROM_GRID=1` also weighs every grid run (best validation Jaccard wins).
release: install
	unet-ssl release $(if $(FROM_GRID),--from-grid)
