#!/usr/bin/env bash
# The GPU checks of issue #18 in one call of the device tool (a machine with one NVIDIA
# H100/H200 and the image's own python3 with PyTorch; nothing can be fetched there).
#
#   here, once:        make device-wheels        (what the image lacks, as wheels in .whl/)
#   then, one call:    run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=560)
#   (at most 9 minutes: the tests 3.3, bench_gpu.py 3.3, bench_memory.py 1, bench_train.py 1.5)
#
# 1. tests/test_gpu.py: a job that trains and probes on cuda, every probe giving the CPU's
#    answers there, bf16 training, the product methods, checkpointing's peak memory;
# 2. scripts/bench_gpu.py: ResNet-18 on cifar_like, 5,000 probe samples: top-5, trace to 1 %
#    and SLQ against PyHessian, seconds and peak memory;
# 3. scripts/bench_memory.py: whether batched products (matmat) pay on the GPU, per model
#    (the trace's and the density's products go 8 per call on CUDA: TRACE_GPU_BLOCK and
#    SLQ_GPU_BLOCK in landscope/probes/steps.py, not measured on a GPU before);
# 4. scripts/bench_train.py: bf16 training of ResNet-18 against a bare PyTorch loop.
# Everything is printed and written to $OUT (the device tool's folder that comes back).
set -u -o pipefail
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/site:$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/device.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 \
    | tee "$OUT/test_gpu.txt" || status=1
# BENCH_GPU_ARGS="--quick --device cpu" dry-runs this script on a CPU (with a python3 that has torch)
timeout 200 python3 scripts/bench_gpu.py --out "$OUT/bench_gpu.json" \
    ${BENCH_GPU_ARGS:---time-limit 150} 2>&1 | tee "$OUT/bench_gpu.txt" || status=1
timeout 60 python3 scripts/bench_memory.py --repeats 3 2>&1 | tee "$OUT/bench_memory.txt" \
    || status=1
timeout 90 python3 scripts/bench_train.py --device cuda --precision bf16 --dataset cifar_like \
    --model resnet18 --epochs 1 --repeats 3 2>&1 | tee "$OUT/bench_train.txt" || status=1
exit $status
