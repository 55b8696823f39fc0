# Two commands do all the set-up on a fresh machine:
#   make run   install into .venv, put the embedded sample in data/raw, run `dvc repro` end to end
#   make test  install what the tests need and run pytest
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: install run test test-slow ui paper clean-runs

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

ui: install
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000 --workers 1

paper: install
	cp profiles/paper.yaml params.yaml
	dvc repro
