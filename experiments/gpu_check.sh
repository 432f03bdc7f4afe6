#!/usr/bin/env bash
# The GPU check, from the repository root on a fresh CUDA machine (about 10 minutes on one H200):
#   bash experiments/gpu_check.sh [OUT_DIR]
# 1. installs the package without touching the machine's torch/triton (no network needed);
# 2. runs the kernel tests natively (not in Triton's interpreter) in fp32, fp16 and bf16;
# 3. benchmarks every kernel against its torch twin and the research code's eager attention;
# 4. times an end-to-end ElasticCache generation of an 8B-shaped random-weight LLaDA (bf16, prompt 512,
#    gen 256) through the kernel path and the torch path;
# 5. times the bundled tiny-dream with and without the ARGuide (tiny-ar), end to end, batch 1 and 16;
# 6. checks and times LLaDA-MoE's expert layer (64 experts, top 8, bf16) through torch's grouped GEMM;
# 7. counts host syncs per decode step per refresh policy on the GPU (tiny LLaDA, 2 and 8 layers);
# 8. compiles the kernels ahead of time (the quick set) for sm_80/sm_90 and reads this GPU's own
#    target back through the driver (registers, spills) beside cuobjdump's reading.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
PYTHON="${PYTHON:-python3}"
status=0

echo "== install"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . || { echo "install failed"; exit 1; }
"$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.cuda.is_available())"

echo "== kernel tests (native)"
timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_ops_*.py \
  --ignore=tests/test_ops_aot.py 2>&1 | tee "$OUT_DIR/kernel_tests.log" \
  | tail -25 || status=1

echo "== kernel benchmark and end to end"
timeout 300 "$PYTHON" experiments/bench_kernels.py --end-to-end 2>&1 | tee "$OUT_DIR/bench_kernels.log" || status=1
tail -1 "$OUT_DIR/bench_kernels.log" > "$OUT_DIR/bench_kernels.json"

echo "== AR-guided decoding (tiny models, end to end)"
timeout 150 "$PYTHON" experiments/bench.py --model tiny-dream --setting short --problems 128 --batch-sizes 1 16 \
  --gammas 0.9 --drifts heads --methods ElasticCache --out "$OUT_DIR/guide-tiny-dream-short" 2>&1 \
  | tail -12 || status=1
echo "== MoE expert layer (grouped GEMM on CUDA, bf16)"
timeout 120 "$PYTHON" experiments/bench_experts.py --device cuda --dtype bfloat16 --d-model 2048 \
  --hidden 1024 --experts 64 --tokens 8 64 4096 2>&1 | tee "$OUT_DIR/bench_experts.log" || status=1
echo "== host syncs per decode step (tiny LLaDA, kernel path)"
timeout 120 "$PYTHON" experiments/count_syncs.py --device cuda --layers 2 8 2>&1 \
  | tee "$OUT_DIR/count_syncs.log" || status=1

echo "== ahead-of-time compile report (sm_80/sm_90; the driver's reading on this GPU)"
timeout 240 "$PYTHON" experiments/bench_kernels.py --compile-report --quick \
  --json "$OUT_DIR/aot_compile.json" 2>&1 | tee "$OUT_DIR/aot_compile.log" | tail -6 || status=1
exit $status
