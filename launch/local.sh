#!/usr/bin/env bash
# Train on this machine with all of its devices (the CPU, or every local GPU / TPU chip).
#
#   launch/local.sh CONFIG WORKDIR [--config.FIELD=VALUE ...] [--dry-run]
#   launch/local.sh configs/sr_imagenet.py:mode=ra runs/sr_ra --config.data.data_dir=$TFDS_DATA_DIR
#
# Rerunning the same command resumes from the newest checkpoint in WORKDIR.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.FIELD=VALUE ...] [--dry-run]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
dry_run=0
args=()
for a in "$@"; do
  if [[ $a == --dry-run ]]; then dry_run=1; else args+=("$a"); fi
done

python=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null 2>&1; then
  # Overlap collectives with compute and let XLA pick fused kernels on GPUs.
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
  # Let the JAX allocator take most of the GPU memory up front (avoids fragmentation).
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
fi

cmd=("$python" -m rajax.train --config "$config" --workdir "$workdir" "${args[@]}")
if [[ $dry_run == 1 ]]; then
  echo "XLA_FLAGS=${XLA_FLAGS:-}"
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
