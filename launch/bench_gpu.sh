#!/usr/bin/env bash
# The accelerator figures of docs/performance.md: every benchmark run, one JSON record each, in
# priority order.
#
#   launch/bench_gpu.sh [--dry-run] [--only REGEX] OUTDIR
#   launch/bench_gpu.sh --budget SECONDS [--wheels DIR] [--estimates RECORDS] [--dry-run] [--only REGEX] OUTDIR
#
#   launch/bench_gpu.sh runs/bench_h100                  # everything (about 20 minutes on one H100)
#   launch/bench_gpu.sh --only '^sr_ra' runs/bench_h100  # the runs whose name matches
#   launch/bench_gpu.sh --dry-run runs/bench_h100        # print the commands only
#   launch/bench_gpu.sh --budget 510 --wheels .whl "$OUT"   # one budgeted call (below)
#   launch/bench_gpu.sh --budget 510 --dry-run "$OUT"    # its plan: estimates, what the budget skips
#
# Each run is `python -m rajax.bench ...`; its JSON record goes to OUTDIR/NAME.json and its log to
# OUTDIR/NAME.log, and OUTDIR/commands.txt lists what ran, with the XLA flags. Single-device runs
# use one device (--config.mesh.data=1); the multi_* runs use all local GPUs when there are
# several. A failed run is reported at the end (exit status 1) without stopping the others.
#
# --budget SECONDS: everything within SECONDS (launch/bench_budget.py does it): first the wheels of
# --wheels DIR whose module does not import (launch/gpu_wheels.txt, fetched here with
# `python3 launch/gpu_wheels.py fetch DIR`), then a smoke run of one tiny step that stops the script if
# it fails, then the runs in the order below, each started only when its estimated cost fits in what
# is left and killed at its own time limit. OUTDIR gets records.jsonl (every record as its run ends,
# skipped runs with the reason), bench.log and commands.txt, and keeps them when the script is cut short.
# --estimates RECORDS takes the estimates from an earlier budgeted run's records.jsonl.
#
# Environment: PYTHON (default python3); NUM_GPUS (default: counted by nvidia-smi);
# PIPELINE_WORKERS (grain worker processes for the end-to-end runs, default: half the CPU cores);
# XLA_FLAGS is kept and each run's own flags are added after it. With --budget also WHEEL_PINS (the
# pin list, default launch/gpu_wheels.txt) and SMOKE_TIMEOUT (the smoke run's limit, default 120 s).
set -euo pipefail

usage() { echo "usage: $0 [--budget SECONDS [--wheels DIR] [--estimates RECORDS]] [--dry-run] [--only REGEX] OUTDIR"; }

dry_run=0 only="" budget="" wheels="" estimates="" positional=()
while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    --only) only=${2:-}; shift ;;
    --only=*) only=${1#*=} ;;
    --budget) budget=${2:-}; shift ;;
    --budget=*) budget=${1#*=} ;;
    --wheels) wheels=${2:-}; shift ;;
    --wheels=*) wheels=${1#*=} ;;
    --estimates) estimates=${2:-}; shift ;;
    --estimates=*) estimates=${1#*=} ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "$0: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) positional+=("$1") ;;
  esac
  shift || true
done
if [[ ${#positional[@]} -ne 1 ]]; then
  usage >&2
  exit 2
fi
if [[ -n $budget ]] && ! [[ $budget =~ ^[0-9]+$ && $budget -gt 10 ]]; then
  echo "$0: --budget needs whole seconds above 10 (everything included), e.g. --budget 510; got '$budget'" >&2
  exit 2
fi
if [[ (-n $wheels || -n $estimates) && -z $budget ]]; then
  echo "$0: --wheels and --estimates belong to the budgeted run; add --budget SECONDS (e.g. --budget 510)" >&2
  exit 2
fi
if [[ -n $wheels && ! -d $wheels ]]; then
  echo "$0: --wheels $wheels is not a folder; fetch the wheels first: python3 launch/gpu_wheels.py fetch $wheels" >&2
  exit 2
fi
outdir=${positional[0]}
python=${PYTHON:-python3}
gpus=${NUM_GPUS:-}
if [[ -z $gpus ]]; then
  gpus=0
  if command -v nvidia-smi >/dev/null 2>&1; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
fi
if ! [[ $gpus =~ ^[0-9]+$ ]]; then
  echo "$0: NUM_GPUS must be a number, got '$gpus'" >&2
  exit 2
fi
cores=$(nproc 2>/dev/null || echo 2)
workers=${PIPELINE_WORKERS:-$(( cores / 2 > 0 ? cores / 2 : 1 ))}

C=configs/bench.py
ONE=--config.mesh.data=1
# name | extra XLA flags | arguments of python -m rajax.bench; in priority order
runs=(
  # targets: RA on SR and denoising, bfloat16, the reference batches (64 for SR, 32 at 224x224), vs
  # PyTorch eager AMP and torch.compile in the same process
  "sr_ra||--config $C:task=sr,mode=ra $ONE --vs-torch"
  "denoise_ra||--config $C:task=denoise,mode=ra $ONE --vs-torch"
  # the other methods (unsupervised within 15% of RA; transformer: its own img/s and TFLOP/s); their
  # PyTorch comparison comes later (*_vs_torch), as it costs more than the runs themselves
  "sr_unsupervised||--config $C:task=sr,mode=unsupervised $ONE"
  "sr_transformer||--config $C:task=sr,mode=transformer $ONE"
  "denoise_unsupervised||--config $C:task=denoise,mode=unsupervised $ONE"
  "denoise_transformer||--config $C:task=denoise,mode=transformer $ONE"
  # levers: batch size
  "sr_ra_b128||--config $C:task=sr,mode=ra,batch=128 $ONE"
  "sr_ra_b256||--config $C:task=sr,mode=ra,batch=256 $ONE"
  # levers: XLA GPU flags
  "sr_ra_latency_hiding|--xla_gpu_enable_latency_hiding_scheduler=true|--config $C:task=sr,mode=ra $ONE"
  "sr_ra_no_triton_gemm|--xla_gpu_enable_triton_gemm=false|--config $C:task=sr,mode=ra $ONE"
  "sr_ra_no_command_buffer|--xla_gpu_enable_command_buffer=|--config $C:task=sr,mode=ra $ONE"
  "denoise_ra_latency_hiding|--xla_gpu_enable_latency_hiding_scheduler=true|--config $C:task=denoise,mode=ra $ONE"
)
if ((gpus > 1)); then
  # levers: data parallel over all local GPUs, 64 images per GPU, global vs per-device BatchNorm statistics
  runs+=(
    "multi_sr_ra_global|--xla_gpu_enable_latency_hiding_scheduler=true|--config $C:task=sr,mode=ra,batch=$((64 * gpus)) --config.bn_stats=global"
    "multi_sr_ra_per_device|--xla_gpu_enable_latency_hiding_scheduler=true|--config $C:task=sr,mode=ra,batch=$((64 * gpus)) --config.bn_stats=per_device"
    "multi_denoise_ra_global|--xla_gpu_enable_latency_hiding_scheduler=true|--config $C:task=denoise,mode=ra,batch=$((32 * gpus)) --config.bn_stats=global"
    "multi_denoise_ra_per_device|--xla_gpu_enable_latency_hiding_scheduler=true|--config $C:task=denoise,mode=ra,batch=$((32 * gpus)) --config.bn_stats=per_device"
  )
fi
runs+=(
  # end to end: the grain pipeline on this host's CPUs feeding the step; the third task's target
  # (vs PyTorch) before its own end-to-end run
  "sr_ra_pipeline||--config $C:task=sr,mode=ra $ONE --pipeline --config.data.workers=$workers"
  "denoise_ra_pipeline||--config $C:task=denoise,mode=ra $ONE --pipeline --config.data.workers=$workers"
  "jpeg_ra||--config $C:task=jpeg,mode=ra $ONE --vs-torch"
  "jpeg_ra_pipeline||--config $C:task=jpeg,mode=ra $ONE --pipeline --config.data.workers=$workers"
  # the rest: the other methods vs PyTorch, the design notes' third row, plain training, R alone,
  # dtype, more batch sizes, host noise
  "sr_unsupervised_vs_torch||--config $C:task=sr,mode=unsupervised $ONE --vs-torch"
  "sr_transformer_vs_torch||--config $C:task=sr,mode=transformer $ONE --vs-torch"
  "sr_ra_16blocks_b128||--config $C:task=sr,mode=ra,blocks=16,batch=128 $ONE --vs-torch"
  "sr_plain||--config $C:task=sr,mode=plain $ONE"
  # R alone (ResNet-18, 224x224, batch 32): forward and the input gradient RA backpropagates into P
  "recognizer_resnet18||--config $C:task=denoise,mode=ra $ONE --recognizer"
  "sr_ra_fp32||--config $C:task=sr,mode=ra,dtype=float32 $ONE --vs-torch"
  "sr_ra_b32||--config $C:task=sr,mode=ra,batch=32 $ONE"
  "denoise_ra_b64||--config $C:task=denoise,mode=ra,batch=64 $ONE"
  "denoise_ra_host_noise||--config $C:task=denoise,mode=ra $ONE --config.data.noise=host"
  # collectives of the 8-device data-parallel step (compiled on fake CPU devices)
  "hlo_sr_ra||--config $C:task=sr,mode=ra,batch=16,dtype=bfloat16 --config.data.crop=32 --hlo 8"
  "hlo_sr_transformer||--config $C:task=sr,mode=transformer,batch=16,dtype=bfloat16 --config.data.crop=32 --hlo 8"
)
# The budgeted run's smoke test: one tiny step, and PyTorch's eager AMP step (no torch.compile).
smoke="smoke||--config $C:task=sr,mode=ra,tiny=true,steps=1 $ONE --config.bench.warmup=0 --vs-torch --config.bench.torch_variants=amp_bf16_cl"

selected=()
for entry in "${runs[@]}"; do
  IFS='|' read -r name _ _ <<<"$entry"
  if [[ -n $only && ! $name =~ $only ]]; then continue; fi
  selected+=("$entry")
done

if [[ -n $budget ]]; then
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  args=(--budget "$budget" --python "$python" --gpus "$gpus" --pins "${WHEEL_PINS:-$here/gpu_wheels.txt}" --smoke "$smoke")
  if [[ -n $wheels ]]; then args+=(--wheels "$wheels"); fi
  if [[ -n $estimates ]]; then args+=(--estimates "$estimates"); fi
  if ((dry_run)); then args+=(--dry-run); fi
  for entry in "${selected[@]}"; do args+=(--run "$entry"); done
  exec "$python" "$here/bench_budget.py" "${args[@]}" "$outdir"
fi

if ((!dry_run)); then mkdir -p "$outdir"; fi
failed=()
for entry in "${selected[@]}"; do
  IFS='|' read -r name flags args <<<"$entry"
  run_flags="${XLA_FLAGS:-}${flags:+ $flags}"
  read -r -a argv <<<"$args"
  run_flags=${run_flags# }
  line="$python -m rajax.bench ${args}"
  if [[ -n $run_flags ]]; then line="XLA_FLAGS=$(printf '%q' "$run_flags") $line"; fi
  if ((dry_run)); then
    echo "$name: $line"
    continue
  fi
  echo "$name: $line" | tee -a "$outdir/commands.txt"
  if XLA_FLAGS="$run_flags" "$python" -m rajax.bench "${argv[@]}" >"$outdir/$name.out" 2>"$outdir/$name.log"; then
    tail -n 1 "$outdir/$name.out" >"$outdir/$name.json"
    grep -v '^{' "$outdir/$name.out" >>"$outdir/$name.log" || true
    rm -f "$outdir/$name.out"
    tail -n 3 "$outdir/$name.log" | sed 's/^/  /'
  else
    echo "  FAILED (see $outdir/$name.log)" >&2
    failed+=("$name")
  fi
done
if ((${#failed[@]})); then
  echo "$0: ${#failed[@]} run(s) failed: ${failed[*]}" >&2
  exit 1
fi
