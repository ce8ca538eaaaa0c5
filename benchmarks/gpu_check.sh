#!/usr/bin/env bash
# The GPU figures of issue 15 in one command, for a session that is lent a GPU: each part under
# its own time limit, in order of priority, its log and JSON written as it goes, so that a part
# cut short leaves what it measured and the next part still runs. Total: at most 540 s, inside
# one 10-minute device call with room to spare.
#
#   benchmarks/gpu_check.sh [OUTPUT_DIR]     (default: benchmarks/results/gpu_check)
#
# 1. bench_vs_original --gpu: the side-by-side at crop 321, batch 10, PyTorch with autocast
#    against this project with mixed precision and XLA, all three modes; gives the mixed + XLA
#    row of the paper's ResNet-101 with its compile time (first_step_s) and the GPU utilisation.
# 2. bench_train --gpu: the missing mixed precision + XLA row of MobileNetV2 (it then goes on to
#    ResNet-101, which part 1 measured, until the limit).
# 3. bench_vs_original --gpu --precision float32, baseline: ResNet-101 float32 with XLA, its
#    compile time, against PyTorch in float32 (TF32).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/results/gpu_check}"
mkdir -p "$out"
cd "$here"
export TF_CPP_MIN_LOG_LEVEL=2
python -c "import torch, tensorflow as tf; print('torch', torch.__version__, torch.cuda.is_available()); print('tf', tf.__version__, tf.config.list_physical_devices('GPU'))" 2>&1 | tee "$out/versions.log"
timeout 330 python bench_vs_original.py --gpu --output "$out/vs_original_mixed_xla.json" 2>&1 | tee "$out/vs_original_mixed_xla.log"
timeout 90 python bench_train.py --gpu --quick --precision mixed_float16 --xla on 2>&1 | tee "$out/bench_train_mixed_xla.log"
timeout 120 python bench_vs_original.py --gpu --precision float32 --modes baseline --rounds 5 --output "$out/vs_original_float32_xla.json" 2>&1 | tee "$out/vs_original_float32_xla.log"
echo "gpu_check: done; figures in $out"
