#!/usr/bin/env bash
# Train on this machine: one process with all of its devices (the CPU, or every local GPU), or
# --processes N processes joined by jax.distributed over the loopback interface (one per GPU, or
# CPU processes to try a multi-host set-up on one machine).
#
#   launch/local.sh [--processes N] [--port P] [--dry-run] CONFIG WORKDIR [--config.FIELD=VALUE ...]
#
#   launch/local.sh configs/imagenet.py:task=sr,mode=ra runs/sr_ra --config.data.data_dir=$TFDS_DATA_DIR \
#       --config.compute_dtype=bfloat16
#   launch/local.sh --processes 8 configs/imagenet.py:task=sr,mode=ra runs/sr_ra ...   # one process per GPU
#   XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
#       launch/local.sh --processes 2 configs/smoke.py runs/smoke_2proc           # 2 CPU "hosts"
#
# --dry-run prints the environment and command of each process instead of running them.
# With several processes each one's output is prefixed with "[process i]"; when one fails the
# others exit too (jax.distributed heartbeats, RAJAX_HEARTBEAT_TIMEOUT seconds) and this script
# reports each failed process and exits non-zero. SIGTERM sent to this script (not to its whole
# process group) is passed on to every process, as is Ctrl-C; each saves a checkpoint and exits.
# Rerunning the same command resumes from the newest complete checkpoint.
#
# Environment: PYTHON (default python3); XLA_FLAGS and XLA_PYTHON_CLIENT_MEM_FRACTION are added to
# (the flags given here come after this script's, so they win).
set -euo pipefail

usage() {
  echo "usage: $0 [--processes N] [--port P] [--dry-run] CONFIG WORKDIR [--config.FIELD=VALUE ...]"
}

processes=1 port="" dry_run=0
positional=() overrides=()
while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    --processes) processes=${2:-}; shift ;;
    --processes=*) processes=${1#*=} ;;
    --port) port=${2:-}; shift ;;
    --port=*) port=${1#*=} ;;
    --config.*) overrides+=("$1") ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "$0: unknown option $1; config overrides look like --config.optim.processor.lr=3e-4" >&2; usage >&2; exit 2 ;;
    *) positional+=("$1") ;;
  esac
  shift || true
done
if [[ ${#positional[@]} -ne 2 ]]; then
  usage >&2
  exit 2
fi
if ! [[ $processes =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: --processes must be a positive integer, got '$processes'" >&2
  exit 2
fi
config=${positional[0]} workdir=${positional[1]}
python=${PYTHON:-python3}

# ---------------------------------------------------------------- platform flags
gpus=0
if [[ ${JAX_PLATFORMS:-} != cpu ]] && command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
if ((gpus > 0)); then
  # Let XLA schedule the gradient all-reduce to overlap with the backward pass.
  export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true${XLA_FLAGS:+ $XLA_FLAGS}"
  # Take most of the GPU memory up front (avoids fragmentation); leave some for cuDNN/NCCL.
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
  if ((processes > 1 && gpus % processes)); then
    echo "$0: $gpus GPUs cannot be split evenly over $processes processes; use a divisor of $gpus." >&2
    exit 2
  fi
fi

cmd=("$python" -m rajax.train --config "$config" --workdir "$workdir" ${overrides[@]+"${overrides[@]}"})

print_env() {
  local name
  for name in XLA_FLAGS XLA_PYTHON_CLIENT_MEM_FRACTION JAX_PLATFORMS; do
    if [[ -n ${!name:-} ]]; then printf '%s=%q\n' "$name" "${!name}"; fi
  done
}

# ---------------------------------------------------------------- one process
if ((processes == 1)); then
  if ((dry_run)); then
    print_env
    printf '%q ' "${cmd[@]}"; echo
    exit 0
  fi
  exec "${cmd[@]}"
fi

# ---------------------------------------------------------------- several processes
if [[ -z $port ]]; then
  # A port the system reports free on the loopback interface.
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
process_env() {  # the variables that make process $1 one of $processes
  local i=$1
  echo "RAJAX_DISTRIBUTED=1"
  echo "JAX_COORDINATOR_ADDRESS=127.0.0.1:$port"
  echo "JAX_COORDINATOR_BIND_ADDRESS=127.0.0.1:$port"
  echo "RAJAX_NUM_PROCESSES=$processes"
  echo "RAJAX_PROCESS_ID=$i"
  if ((gpus > 0)); then
    local per=$((gpus / processes)) ids="" d
    for ((d = i * per; d < (i + 1) * per; d++)); do ids+="${ids:+,}$d"; done
    echo "JAX_LOCAL_DEVICE_IDS=$ids"
  fi
}

if ((dry_run)); then
  print_env
  for ((i = 0; i < processes; i++)); do
    mapfile -t vars < <(process_env "$i")
    printf '%s ' "${vars[@]}"; printf '%q ' "${cmd[@]}"; echo
  done
  exit 0
fi

rundir=$(mktemp -d)
trap 'rm -rf "$rundir"' EXIT
# A stop request leaves $rundir/stop, so a waiter that records its process's pid only after the
# signal came (a process can print before its waiter has written pid.i) still stops it.
forward() {  # pass a signal on to every process
  local f
  touch "$rundir/stop"
  for f in "$rundir"/pid.*; do [[ -e $f ]] && kill -"$1" "$(cat "$f")" 2>/dev/null || true; done
}
interrupt() {
  # Ctrl-C in a terminal reaches every process directly once the trainer handles it; a process that
  # still ignores SIGINT (started in the background, before the trainer's handler) gets SIGTERM.
  local f pid ignored
  touch "$rundir/stop"
  for f in "$rundir"/pid.*; do
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    ignored=$(awk '/^SigIgn:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    if [[ -z $ignored ]] || (( 16#$ignored & 2 )); then kill -TERM "$pid" 2>/dev/null || true; fi
  done
}
trap 'forward TERM' TERM
trap interrupt INT

jobs_=()
for ((i = 0; i < processes; i++)); do
  mapfile -t vars < <(process_env "$i")
  (  # runs process i and records its exit status in $rundir/status.i
    env "${vars[@]}" "${cmd[@]}" &
    pid=$!
    trap '' INT TERM  # this waiter outlives the process
    echo "$pid" >"$rundir/pid.$i"
    if [[ -e $rundir/stop ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
    echo "launch: process $i of $processes has pid $pid; coordinator 127.0.0.1:$port"
    rc=0
    while :; do
      wait "$pid" && rc=0 || rc=$?
      if ((rc > 128)) && kill -0 "$pid" 2>/dev/null; then continue; fi
      break
    done
    echo "$rc" >"$rundir/status.$i"
  ) 2>&1 | (trap '' INT TERM; exec sed -u "s/^/[process $i] /") &
  jobs_+=($!)
done

# Wait for every process (through interrupted waits while signals are being forwarded).
for ((i = 0; i < processes; i++)); do
  while [[ ! -e $rundir/status.$i ]] && kill -0 "${jobs_[i]}" 2>/dev/null; do
    wait "${jobs_[i]}" || true
  done
done

failed=0
for ((i = 0; i < processes; i++)); do
  rc=$(cat "$rundir/status.$i" 2>/dev/null || echo "unknown")
  if [[ $rc != 0 ]]; then
    [[ $rc == unknown ]] && rc=255
    why="status $rc"
    ((rc > 128)) && why+=" (signal $((rc - 128)))"
    echo "$0: process $i exited with $why" >&2
    ((failed == 0)) && failed=$rc
  fi
done
if ((failed != 0)); then
  echo "$0: the run stopped. Rerun the same command to resume from the newest complete checkpoint in $workdir/checkpoints." >&2
fi
exit "$failed"
