#!/usr/bin/env bash
# Every GPU claim of the project in one run (an H100 or H200, <= 8 minutes), one table at the end.
#
#   benches/gpu_check.sh              run it (needs a CUDA GPU)
#   benches/gpu_check.sh --dry-run    on any machine (CI runs it): every step's command with
#                                     --smoke (tiny shapes on the CPU), pytest collects the GPU
#                                     tests, the table reader runs; no GPU, nothing measured
#   benches/gpu_check.sh --fetch-wheels
#                                     on a machine with pip and the internet: download into .whl/
#                                     the wheels a bare GPU image lacks (Python 3.12, x86-64)
#
# On the GPU machine nothing is installed: wheels in .whl/ (or $WHEELS) are unpacked into
# /tmp/gpu_check_site, and the package runs from python/ with its compiled extension
# (python/onpolicy_sft/_core*.so, built on any x86-64 Linux: it is abi3) beside it.
#
# Steps (each under its own time limit; a failed or timed-out step is reported, the rest still run):
#   loss    benches/bench_loss.py --shapes 0.5b,7b   fused loss vs the lm_head GEMM floor, torch
#                                                    eager, Liger-Kernel and TRL's fused head
#   train   benches/bench_train.py                   PolicyTrainer vs transformers' default loss
#   trl     benches/bench_trl.py                     PolicySFTTrainer vs TRL's loss_type="dft"
#   tests   pytest -m gpu                            the GPU tests (Triton kernels, training)
set -uo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
DRY=0
FETCH=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --fetch-wheels) FETCH=1 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (use --dry-run, --fetch-wheels or --help)" >&2; exit 2 ;;
  esac
done

WHEELS=${WHEELS:-$REPO/.whl}
PY=${PYTHON:-python3}
# What a bare GPU image (torch, triton, transformers, accelerate, pyarrow, peft, pytest...) lacks.
NEEDED_WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 liger-kernel==0.8.5
               math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2)

if [ "$FETCH" = 1 ]; then
  mkdir -p "$WHEELS"
  # EXTRA_WHEELS="pyarrow==26.0.1 ...": more, e.g. where the image's versions are too old
  # (datasets 5.2 needs pyarrow >= 24; the preflight below names what is missing)
  for w in "${NEEDED_WHEELS[@]}" ${EXTRA_WHEELS:-}; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d "$WHEELS" "$w" || { echo "gpu_check.sh: could not fetch $w" >&2; exit 1; }
  done
  ls "$WHEELS"
  exit 0
fi

# name | time limit (s) | command
STEPS=(
  "loss|170|$PY benches/bench_loss.py --shapes 0.5b,7b --iters 10 --warmup 3"
  "train|110|$PY benches/bench_train.py --steps 6 --warmup 2"
  "trl|120|$PY benches/bench_trl.py --steps 6 --warmup 2 --rounds 1"
  "tests|70|$PY -m pytest -q -m gpu -p no:cacheprovider tests"
)

OUT=${GPU_CHECK_OUT:-$REPO/bench_results/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$REPO/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

if [ "$DRY" = 1 ]; then
  echo "gpu_check.sh --dry-run: the plan, each entry point checked (nothing is measured)"
  status=0
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$step"
    script=$(echo "$cmd" | awk '{print $2}')
    if [ "$name" = tests ]; then
      check="$PY -m pytest -q --collect-only -m gpu -p no:cacheprovider tests"
    else
      # the step's own flags plus --smoke: tiny shapes on the CPU, the whole code path
      check="$cmd --smoke"
      [ -f "$script" ] || { echo "  $name: MISSING $script"; status=1; continue; }
    fi
    if $check >"$OUT/$name.dry.log" 2>&1; then
      echo "  $name (limit ${limit}s): ok    $cmd"
    else
      echo "  $name (limit ${limit}s): FAILED $check (see $OUT/$name.dry.log)"; status=1
    fi
  done
  total=0
  for step in "${STEPS[@]}"; do IFS='|' read -r _ limit _ <<<"$step"; total=$((total + limit)); done
  echo "  time limits add up to ${total}s (<= 480 s required)"
  [ "$total" -le 480 ] || status=1
  "$PY" benches/gpu_check_table.py "$OUT" --dry-run || status=1
  exit $status
fi

if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site "$WHEELS"/*.whl || { echo "gpu_check.sh: wheel install failed" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: no CUDA GPU visible to $PY; nothing measured (--dry-run checks the script)" >&2
  exit 1
fi
ls "$REPO"/python/onpolicy_sft/_core*.so >/dev/null 2>&1 || {
  echo "gpu_check.sh: python/onpolicy_sft/_core*.so is missing; build it (maturin build, or cargo" \
       "build --release --features python,pyo3/extension-module) and carry it" >&2; exit 1; }
# preflight: every package a step imports, with its version, before minutes are spent
"$PY" - <<'PY' || { echo "gpu_check.sh: a package is missing or too old (above); carry its wheel (EXTRA_WHEELS with --fetch-wheels)" >&2; exit 1; }
import importlib
for name in ("torch", "triton", "transformers", "accelerate", "pyarrow", "datasets", "trl",
             "peft", "liger_kernel", "math_verify", "onpolicy_sft._core"):
    mod = importlib.import_module(name)
    print(f"  {name} {getattr(mod, '__version__', '')}")
import onpolicy_sft.integrations as i
i.PolicySFTTrainer  # noqa: B018  (imports trl's trainer stack)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1
date -u +%Y-%m-%dT%H:%M:%SZ >"$OUT/date.txt"
rm -f "$OUT"/*.rc
start=$SECONDS
for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<<"$step"
  echo "== $name (limit ${limit}s): $cmd"
  t0=$SECONDS
  timeout "$limit" $cmd >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$rc $((SECONDS - t0))" >"$OUT/$name.rc"
  tail -n 25 "$OUT/$name.log"
done
echo "== total $((SECONDS - start)) s"
"$PY" benches/gpu_check_table.py "$OUT"
