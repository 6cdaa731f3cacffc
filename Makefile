# Two commands do all the set-up on a fresh clone (only python3 needed):
#   make quickstart   create .venv, then run a small complete search on the bundled digits data
#   make test         create .venv, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The lock: every package pinned, for the runtime (base) and with the development extras (dev); `make lock` writes it.
LOCK_FLAGS = --universal --python-version 3.11 --quiet --custom-compile-command "make lock"

.PHONY: quickstart test test-fast lint lock bench clean image-folder

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# What the quickstart needs (requirements/base.txt); the development extras on top (requirements/dev.txt).
$(VENV)/.installed: pyproject.toml requirements/base.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements/base.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml requirements/dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@ $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(PY) -m blockqnn.search experiment=quickstart

# Rewrite the lock from pyproject.toml, keeping the pinned versions that still fit (LOCK_UPGRADE=--upgrade: the
# newest releases); base takes dev's versions, so the two agree.
lock: $(VENV)/.installed-dev
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) $(LOCK_UPGRADE) -o requirements/dev.txt
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_FLAGS) -c requirements/dev.txt -o requirements/base.txt

# scikit-learn's digits as an image-folder tree (train/<class>/*.png, test/<class>/*.png) for dataset=imagefolder.
IMAGE_FOLDER ?= data/digits-folder
image-folder: $(IMAGE_FOLDER)
$(IMAGE_FOLDER): | $(VENV)/.installed
	$(PY) experiments/make_image_folder.py $@

test: $(VENV)/.installed-dev
	$(PY) -m pytest -n 2 --durations=15

# The inner loop: everything not marked slow (no subprocess searches, no Ray); CI runs the whole suite.
test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -n 2 -m "not slow"

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check blockqnn tests experiments

clean:
	rm -rf $(VENV) runs outputs multirun .pytest_cache
