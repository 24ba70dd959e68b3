#!/usr/bin/env bash
# One-shot GPU check (a few minutes on one H100/H200-class GPU): step time,
# images/s, MFU against the datasheet bf16 peak and peak device memory of
# ViT-B M3AE pretraining, in mixed_bfloat16 and float32, on every backend
# whose GPU build is installed; then ours vs the reference Flax M3AE on JAX
# when flax/optax are importable and a reference checkout is given.
#
#   bash benchmarks/gpu_check.sh [path/to/m3ae_public checkout]
#
# PEAK_TFLOPS overrides the MFU denominator (default 989: H100/H200 SXM dense
# bf16). float32 rows are divided by the same bf16 peak, so they read low by design.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TF_CPP_MIN_LOG_LEVEL=3
PEAK="${PEAK_TFLOPS:-989}"
REF="${1:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
BACKENDS=""
python -c "import jax; assert jax.devices()[0].platform == 'gpu'" 2>/dev/null && BACKENDS="jax"
python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null && BACKENDS="${BACKENDS:+$BACKENDS,}torch"
python -c "import tensorflow as tf; assert tf.config.list_physical_devices('GPU')" 2>/dev/null \
    && BACKENDS="${BACKENDS:+$BACKENDS,}tensorflow"
echo "backends with a GPU: ${BACKENDS:-none}"
[ -z "$BACKENDS" ] && exit 1
for DTYPE in mixed_bfloat16 float32; do
    echo "== pretrain_throughput, ViT-B M3AE, batch 64, $DTYPE"
    DT=""; [ "$DTYPE" != float32 ] && DT="--dtype $DTYPE"
    timeout 240 python benchmarks/pretrain_throughput.py --backends "$BACKENDS" --sizes base \
        --batch 64 --steps 10 --warmup 3 --matmul-size 8192 --peak-tflops "$PEAK" $DT
done
if [ -n "$REF" ] && [[ "$BACKENDS" == *jax* ]]; then
    for DTYPE in mixed_bfloat16 float32; do
        echo "== compare, base, batch 64, ours in $DTYPE (the peers are float32 only)"
        timeout 240 python benchmarks/compare.py --reference "$REF" --size base \
            --batch 64 --backend jax --rounds 4 --block-steps 5 --dtype "$DTYPE"
    done
fi
