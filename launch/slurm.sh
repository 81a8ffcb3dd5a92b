#!/usr/bin/env bash
#SBATCH --job-name=rajax
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --output=%x-%j.out
# Train over several GPU hosts with Slurm: srun starts one process per GPU and jax.distributed joins
# them into one run over all GPUs of all nodes.
#
#   sbatch --nodes=4 launch/slurm.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   sbatch --nodes=2 --gpus-per-node=4 --ntasks-per-node=4 launch/slurm.sh CONFIG WORKDIR ...
#   salloc --nodes=2 --gpus-per-node=8 --ntasks-per-node=8   # then, inside the allocation:
#   launch/slurm.sh CONFIG WORKDIR ...
#   launch/slurm.sh --dry-run CONFIG WORKDIR ...   # prints what it would run (also outside Slurm)
#
# Submit from the repository root (CONFIG and WORKDIR are relative to it). --ntasks-per-node must
# equal the GPUs per node and --gpus-per-task must not be used: every task sees its node's GPUs and
# jax.distributed.initialize() gives task SLURM_LOCALID the GPU of that index. It also reads the
# coordinator (first node, port from the job id), the number of processes and this process's id from
# Slurm's variables. WORKDIR must be on a filesystem all nodes share.
#
# When a task fails, srun (--kill-on-bad-exit) and the jax.distributed heartbeats stop the others and
# this script exits non-zero. Submitting the same command again (or `sbatch --requeue`, or
# `scontrol requeue JOBID`) resumes from the newest complete checkpoint in WORKDIR.
#
# Environment: PYTHON (default python3); XLA_FLAGS, XLA_PYTHON_CLIENT_MEM_FRACTION and
# RAJAX_HEARTBEAT_TIMEOUT (seconds) are passed on; SRUN_FLAGS adds srun options.
set -euo pipefail

usage() {
  echo "usage: sbatch [SBATCH OPTIONS] $0 [--dry-run] CONFIG WORKDIR [--config.FIELD=VALUE ...]"
}

dry_run=0
positional=() overrides=()
while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    --config.*) overrides+=("$1") ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "$0: unknown option $1; config overrides look like --config.optim.processor.lr=3e-4" >&2; usage >&2; exit 2 ;;
    *) positional+=("$1") ;;
  esac
  shift
done
if [[ ${#positional[@]} -ne 2 ]]; then
  usage >&2
  exit 2
fi
config=${positional[0]} workdir=${positional[1]}
python=${PYTHON:-python3}

if [[ -n ${SLURM_SUBMIT_DIR:-} ]]; then
  cd "$SLURM_SUBMIT_DIR"  # sbatch runs a copy of this script from Slurm's spool directory
fi

# Every process starts jax.distributed; Slurm's variables say where the others are.
export RAJAX_DISTRIBUTED=1
# Let XLA schedule the gradient all-reduce (NCCL) to overlap with the backward pass.
export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true${XLA_FLAGS:+ $XLA_FLAGS}"
# Take most of each GPU's memory up front (avoids fragmentation); leave some for cuDNN/NCCL.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

# --kill-on-bad-exit: a task that exits non-zero ends the whole step at once.
# shellcheck disable=SC2206  # SRUN_FLAGS is split into words on purpose
srun_cmd=(srun --kill-on-bad-exit=1 ${SRUN_FLAGS:-}
          "$python" -m rajax.train --config "$config" --workdir "$workdir" ${overrides[@]+"${overrides[@]}"})

if ((dry_run)); then
  if [[ -n ${SLURM_JOB_ID:-} ]]; then
    echo "# Slurm job $SLURM_JOB_ID: ${SLURM_JOB_NUM_NODES:-?} node(s), ${SLURM_NTASKS_PER_NODE:-?} task(s) per node"
  else
    echo "# not inside a Slurm allocation: submit with sbatch [--nodes=N ...] $0 ..."
  fi
  echo "cd $(printf '%q' "$PWD")"
  for name in RAJAX_DISTRIBUTED XLA_FLAGS XLA_PYTHON_CLIENT_MEM_FRACTION RAJAX_HEARTBEAT_TIMEOUT; do
    if [[ -n ${!name:-} ]]; then printf '%s=%q\n' "$name" "${!name}"; fi
  done
  printf '%q ' "${srun_cmd[@]}"; echo
  exit 0
fi

if [[ -z ${SLURM_JOB_ID:-} ]]; then
  echo "$0: not inside a Slurm allocation. Submit it: sbatch --nodes=N $0 $config $workdir ...," \
       "or run it inside salloc; --dry-run shows the srun command." >&2
  exit 2
fi
gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}
tasks=${SLURM_NTASKS_PER_NODE:-}
if [[ $gpus =~ ^[0-9]+$ && $tasks =~ ^[0-9]+$ && $gpus != "$tasks" ]]; then
  echo "$0: warning: $tasks task(s) per node but $gpus GPU(s) per node; use --ntasks-per-node=$gpus" \
       "(one process per GPU)." >&2
fi

rc=0
"${srun_cmd[@]}" || rc=$?
if ((rc != 0)); then
  echo "$0: srun exited with status $rc. Submit the same command again to resume from the newest" \
       "complete checkpoint in $workdir/checkpoints." >&2
fi
exit "$rc"
