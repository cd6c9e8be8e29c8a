# The two commands a new user needs (see README.md): `make repro` and `make test`. Both set up first.
SHELL := /bin/bash
VENV_BIN := $(CURDIR)/.venv/bin
RUN := PATH="$(VENV_BIN):$$PATH"
PYTEST_ARGS ?=

.PHONY: setup repro test test-all lab dashboard

setup:
	@bash scripts/setup.sh

repro: setup  ## set up, then run the whole pipeline on the embedded default dataset
	$(RUN) dvc repro

test: setup  ## set up, then run the default test suite (slow tests excluded)
	@bash scripts/test_services.sh
	$(RUN) pytest -m "not slow" $(PYTEST_ARGS)

test-all: setup  ## every test, slow ones included
	@bash scripts/test_services.sh
	$(RUN) pytest $(PYTEST_ARGS)

lab: setup  ## JupyterLab with the project kernel
	$(RUN) jupyter lab notebooks/

dashboard: setup  ## the monitoring dashboard (reads monitoring/summary, written by `dvc repro monitor`)
	$(RUN) streamlit run monitoring/app.py --server.address 127.0.0.1 --server.port 8501 --browser.gatherUsageStats false
