#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every TPU VM worker of the slice, joined by
# jax.distributed into one run over all its chips.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project PROJECT] [--repo DIR] [--dry-run] \
#       CONFIG WORKDIR [--config.FIELD=VALUE ...]
#
#   launch/tpu_pod.sh --tpu rajax-v4-32 --zone us-central2-b configs/imagenet.py:task=sr,mode=ra \
#       /mnt/shared/runs/sr_ra --config.data.data_dir=/mnt/shared/tfds --config.compute_dtype=bfloat16
#
# Runs `gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command ...`: on each worker
# it changes to DIR (default: this repository's path here; rajax must be installed there on every
# worker) and runs python3 -m rajax.train with RAJAX_DISTRIBUTED=1; jax.distributed.initialize()
# finds the workers, their number and its own index from the TPU VM metadata. WORKDIR and the data
# must be paths every worker sees (a Filestore/NFS mount or a gcsfuse mount of a bucket).
# --dry-run prints the gcloud command instead of running it.
#
# If a worker fails, the jax.distributed heartbeats stop the others and this script exits non-zero;
# running the same command again resumes from the newest complete checkpoint in WORKDIR.
#
# Environment: PYTHON (python on the workers, default python3); LIBTPU_INIT_ARGS and
# RAJAX_HEARTBEAT_TIMEOUT (seconds) are added to the workers' environment (LIBTPU_INIT_ARGS after
# this script's flags, so they win); GCLOUD (default gcloud).
set -euo pipefail

usage() {
  echo "usage: $0 --tpu NAME --zone ZONE [--project PROJECT] [--repo DIR] [--dry-run] CONFIG WORKDIR [--config.FIELD=VALUE ...]"
}

tpu="" zone="" project="" repo="" dry_run=0
positional=() overrides=()
while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    --tpu|--zone|--project|--repo)
      if (($# < 2)); then echo "$0: $1 needs a value" >&2; usage >&2; exit 2; fi
      declare "${1#--}=$2"; shift ;;
    --tpu=*|--zone=*|--project=*|--repo=*) opt=${1%%=*}; declare "${opt#--}=${1#*=}" ;;
    --config.*) overrides+=("$1") ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "$0: unknown option $1; config overrides look like --config.optim.processor.lr=3e-4" >&2; usage >&2; exit 2 ;;
    *) positional+=("$1") ;;
  esac
  shift
done
if [[ ${#positional[@]} -ne 2 || -z $tpu || -z $zone ]]; then
  usage >&2
  exit 2
fi
config=${positional[0]} workdir=${positional[1]}
repo=${repo:-$(cd "$(dirname "$0")/.." && pwd)}
python=${PYTHON:-python3}
gcloud=${GCLOUD:-gcloud}

# Data-parallel training all-reduces the gradients every step: let libtpu optimise and overlap
# that all-reduce with the backward pass.
libtpu_args="--xla_tpu_enable_data_parallel_all_reduce_opt=true"
libtpu_args+=" --xla_tpu_data_parallel_opt_different_sized_ops=true"
libtpu_args+=" --xla_tpu_enable_async_collective_fusion=true"
libtpu_args+=" --xla_tpu_enable_async_collective_fusion_multiple_steps=true"
libtpu_args+=" --xla_tpu_overlap_compute_collective_tc=true"
libtpu_args+="${LIBTPU_INIT_ARGS:+ $LIBTPU_INIT_ARGS}"

worker_env=(RAJAX_DISTRIBUTED=1 "LIBTPU_INIT_ARGS=$libtpu_args")
if [[ -n ${RAJAX_HEARTBEAT_TIMEOUT:-} ]]; then worker_env+=("RAJAX_HEARTBEAT_TIMEOUT=$RAJAX_HEARTBEAT_TIMEOUT"); fi
train=("$python" -m rajax.train --config "$config" --workdir "$workdir" ${overrides[@]+"${overrides[@]}"})
# The command each worker's shell runs, every word quoted for it.
remote="cd $(printf '%q' "$repo") && env$(printf ' %q' "${worker_env[@]}" "${train[@]}")"

cmd=("$gcloud" compute tpus tpu-vm ssh "$tpu" "--zone=$zone")
if [[ -n $project ]]; then cmd+=("--project=$project"); fi
cmd+=(--worker=all "--command=$remote")

quote() {  # a word as the shell reads it: bare when safe, else in single quotes
  if [[ $1 =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
if ((dry_run)); then
  for word in "${cmd[@]}"; do quote "$word"; printf ' '; done; echo
  exit 0
fi
rc=0
"${cmd[@]}" || rc=$?
if ((rc != 0)); then
  echo "$0: a worker exited with status $rc. Run the same command again to resume from the newest" \
       "complete checkpoint in $workdir/checkpoints." >&2
fi
exit "$rc"
