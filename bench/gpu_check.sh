#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go, for a machine that has one (CI has none; the tests skip them there).
#
#   bash bench/gpu_check.sh OUT [SECONDS]
#
# Needs the package and its dependencies importable (`make setup`, or PYTHON=... pointing at such a Python) and one
# CUDA GPU. Writes, under OUT:
#   gpu.txt         the GPU, driver and library versions
#   gpu_tests.log   `pytest -m gpu` (tests/test_gpu.py): SFT, RM and PPO-ptx on the tiny model on the GPU, bf16 and
#                   4-bit, and the CUDA nf4 gradients against the dequantized model
#   qlora.log/json  bench/qlora_adapter_dtype.py: QLoRA SFT on the real model, fp32 against bf16 LoRA weights
#   pipeline.log    the whole default pipeline (`recipes/pipeline.py`, each stage through `accelerate launch`) on
#                   the real model, into OUT/outputs; stopped when the whole check has run SECONDS (default 900)
#   memory.csv      the GPU memory in use every 0.5 s throughout (nvidia-smi; it includes the CUDA context)
#   results.tar.gz  the pipeline's timings, metrics, summaries, logs, report and plots (no weights)
set -u
OUT=${1:?usage: bash bench/gpu_check.sh OUT [SECONDS]}
DEADLINE=$(($(date +%s) + ${2:-900}))
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
stamp() { echo "[gpu_check] $(date -u +%H:%M:%S) $*" | tee -a "$OUT/steps.log"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
"$PY" - >> "$OUT/gpu.txt" 2>&1 <<'EOF'
import importlib
for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes"):
    module = importlib.import_module(name)
    print(name, module.__version__)
import torch
print("cuda", torch.version.cuda, "bf16", torch.cuda.is_bf16_supported())
EOF
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 500 > "$OUT/memory.csv" 2>&1 &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null' EXIT

stamp "tests"
timeout 200 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
stamp "tests rc $?"

stamp "qlora"
timeout 150 "$PY" bench/qlora_adapter_dtype.py --json "$OUT/qlora.json" > "$OUT/qlora.log" 2>&1
stamp "qlora rc $?"

PIPELINE_SECONDS=$((DEADLINE - $(date +%s) - 20))
stamp "pipeline (${PIPELINE_SECONDS} s at most)"
timeout "$PIPELINE_SECONDS" "$PY" recipes/pipeline.py --config recipes/smollm2-135m/pipeline.yaml \
    --output-root "$OUT/outputs" > "$OUT/pipeline.log" 2>&1
stamp "pipeline rc $?"

(cd "$OUT/outputs" 2>/dev/null && find . \( -name '*.json' -o -name '*.md' -o -name '*.png' -o -name '*.jsonl' \) \
    -not -path '*/checkpoint-*' -size -8M -print0 | tar --null -czf "$OUT/results.tar.gz" -T -)
rm -rf "$OUT/outputs"
stamp "done"
