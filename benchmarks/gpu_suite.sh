#!/usr/bin/env bash
# The GPU measurements the open issues ask for, in two parts that each fit one 10-minute device
# command. Every table goes to stdout and, with its JSON, to $OUT (at most 8 files come back).
#
#   bash benchmarks/gpu_suite.sh quantizers   # GPU tests + quantizers vs vector-quantize-pytorch (#2)
#   bash benchmarks/gpu_suite.sh models       # TiTok bf16 + torch.compile with MFU (#3),
#                                             # GPT-B compiled static-cache decode vs bandwidth (#4)
#
# See benchmarks/README.md for the device set-up (wheels, keeping the shipped weights at home).
set -euo pipefail
part="${1:?usage: gpu_suite.sh quantizers|models}"
if [[ "$part" != quantizers && "$part" != models ]]; then
  echo "unknown part '$part' (quantizers|models)" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu_suite}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"

case "$part" in
  quantizers)
    # a failing GPU test is reported, and the benchmark still runs
    { python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 || true; } \
      | tail -25 | tee "$out/gpu_tests.txt"
    python3 benchmarks/bench_quantizers.py --device cuda --tokens 16384 --repeats 5 \
      --json "$out/bench_quantizers_cuda.json" 2>&1 | tee "$out/bench_quantizers_cuda.txt"
    ;;
  models)
    python3 benchmarks/bench_titok.py --device cuda --compile --batch 64 --repeats 5 \
      --no-reference --json "$out/bench_titok_cuda.json" 2>&1 | tee "$out/bench_titok_cuda.txt"
    # H100 SXM HBM3: 3.35 TB/s; pass --bandwidth for another card
    python3 benchmarks/bench_generator.py --device cuda --compile --tokens 256 --batch 1 8 32 \
      --cfg 2.0 --max-uncached-tokens 32 --bandwidth "${BANDWIDTH:-3.35e12}" \
      --json "$out/bench_generator_cuda.json" 2>&1 | tee "$out/bench_generator_cuda.txt"
    ;;
esac
