# Two commands do all the set-up on a fresh clone (only python3 needed):
#   make quickstart   create .venv, then run a small complete search on the bundled digits data
#   make test         create .venv, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test test-fast lint bench clean image-folder

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

quickstart: $(VENV)/.installed
	$(PY) -m blockqnn.search experiment=quickstart

# scikit-learn's digits as an image-folder tree (train/<class>/*.png, test/<class>/*.png) for dataset=imagefolder.
IMAGE_FOLDER ?= data/digits-folder
image-folder: $(IMAGE_FOLDER)
$(IMAGE_FOLDER): | $(VENV)/.installed
	$(PY) experiments/make_image_folder.py $@

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 --durations=15

# The inner loop: everything not marked slow (no subprocess searches, no Ray); CI runs the whole suite.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -n 2 -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check blockqnn tests experiments

clean:
	rm -rf $(VENV) runs outputs multirun .pytest_cache
