# The lab's commands. `make run` and `make test` are the README's quick start; both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lab-installed
export LAB_PROFILE ?= quick
export TQDM_MININTERVAL ?= 5
# Idle OpenMP threads sleep instead of spinning: on a shared or small machine spinning threads starve the
# other processes (measured here: feature extraction 3x and decoder steps >10x slower without it).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup slide-tools run test test-fast lint clean-data clean slides slides-check

setup: $(STAMP)  ## create .venv with everything the lab needs (Python packages, Java for the COCO metrics)

$(STAMP): requirements.txt pyproject.toml
	@command -v java >/dev/null 2>&1 || { \
	  echo "Java not found: installing a headless JRE for pycocoevalcap (needs apt and root)."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null; }
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "espeak-ng not found: installing the offline speech engine for notebook 11 (needs apt and root)."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (lab)" >/dev/null
	@touch $@

# The slide build and its render check need Chromium, fonts and Marp: installed here, before any test starts,
# so that no test discovers a missing tool half-way (silent and ~0.1 s when everything is present).
slide-tools: setup  ## install what the slide build needs (Chromium and fonts with apt, Marp with npm ci)
	@$(BIN)/python slides/setup_tools.py

run: setup  ## generate the offline dataset and execute every notebook in order, then print a summary
	$(BIN)/python -m labutils run

test: setup slide-tools  ## unit tests + every notebook executed with nbval
	$(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-cell-timeout=900 -p no:cacheprovider

test-fast: setup  ## unit tests only, without the slow ones and without the slide tools (see slide-tools)
	$(BIN)/python -m pytest tests -m "not slow and not slide_tools" -p no:cacheprovider

lint: setup
	$(BIN)/python -m ruff check labutils tests benchmarks slides

slides: slide-tools  ## build the instructor decks into slides/dist/ (HTML + PDF)
	$(BIN)/python slides/build.py

slides-check: slide-tools  ## build the decks, then open every slide in headless Chromium and check it renders
	$(BIN)/python slides/build.py --check

clean-data:  ## remove generated data, caches, checkpoints and executed notebooks
	rm -rf build data/synthetic data/.synthetic-* slides/dist

clean: clean-data
	rm -rf $(VENV)
