#!/usr/bin/env bash
# Device check (issue 10): on one CUDA GPU, serve the draftlink pair batched and print aggregate
# tokens/s, p50/p95 latency and the cloud's mean batch size at 1/8/32/64 concurrent sessions.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage() {
  cat <<'EOF'
usage: bench/device_check.sh [--dry-run] [options of python -m bench.device_check]

Starts one cloud (--device cuda --dtype bfloat16, batched: --max-batch-sessions/--max-batch-tokens/
--batch-wait-ms) and 4 edges drafting on the CPU (int8), warms them up, then runs 1, 8, 32 and 64
concurrent sessions (64 tokens each, ignore_eos) for K-SQS speculative decoding and cloud-only.
Prints a table and writes device_check.json, device_check.md and the process logs to $OUT (when
set) or bench/results/device_check. Stops starting levels after --budget-s (420 s).

Models: the Qwen2.5-Coder pair where `make fetch-models` puts it ($DRAFTLINK_CACHE_DIR or
~/.cache/draftlink, models/qwen2.5-coder-{0.5b,1.5b}/), or any pair given as model specs in
$DRAFTLINK_DEVICE_TARGET and $DRAFTLINK_DEVICE_DRAFTER (e.g. hf:/path/to/dir). When neither is
there it says so loudly and falls back to the embedded tiny pair (figures then measure the
serving and batching path, not Qwen).

Python: $PYTHON if set, else .venv/bin/python, .venv-device/bin/python, python3: the first that
imports draftlink's dependencies and (except in the dry run) whose torch sees a CUDA device.
When only a bare CUDA torch is found, .venv-device is made from it (--system-site-packages) and
the other dependencies are pip-installed into it (needs a wheelhouse or network). The gRPC stubs
(common/rpc/gen, git-ignored) are generated when missing (needs grpcio-tools).

  --dry-run     (or env DEVICE=cpu) CPU, float32, tiny pair, sessions 1,2, 16 tokens, 2 edges:
                the same path, testable without a GPU (about a minute)
  -h, --help    this text, then the Python module's options (when a Python is found)

Exit status: 0 all levels ran without errors; 1 a level had errors or no tokens; 2 no CUDA
device; 3 no usable Python.
EOF
}

help=0
dry=0
for arg in "$@"; do
  case "$arg" in
    -h | --help) help=1 ;;
    --dry-run) dry=1 ;;
  esac
done
if [[ "${DEVICE:-}" == "cpu" ]]; then dry=1; fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

PROBE='import torch, cloud.app, edge.app, bench.device_check
print("cuda" if torch.cuda.is_available() else "nocuda", torch.__version__, torch.version.cuda)'
reasons=()

# usable PY: prints "cuda|nocuda <torch> <cuda>" and returns 0 when PY runs draftlink
probe() {
  local py="$1"
  if [[ ! -f common/rpc/gen/verifier_pb2.py ]]; then
    "$py" -m common.protogen >/dev/null 2>&1 || true
  fi
  "$py" -c "$PROBE" 2>/dev/null | tail -n 1
}

candidates=()
if [[ -n "${PYTHON:-}" ]]; then candidates+=("$PYTHON"); fi
for c in .venv/bin/python .venv-device/bin/python; do
  if [[ -x "$c" ]]; then candidates+=("$ROOT/$c"); fi
done
for c in python3 python; do
  if command -v "$c" >/dev/null 2>&1; then candidates+=("$(command -v "$c")"); fi
done

PY=""
pick() { # sets PY to the first usable candidate
  local py out
  for py in "${candidates[@]}"; do
    out="$(probe "$py" || true)"
    if [[ -z "$out" ]]; then
      reasons+=("$py: cannot import draftlink's dependencies (or torch)")
    elif [[ "$dry" == 1 || "$help" == 1 || "$out" == cuda* ]]; then
      PY="$py"
      return 0
    else
      local _ tv cv
      read -r _ tv cv <<<"$out"
      reasons+=("$py: torch $tv (CUDA build: $cv) sees no CUDA device")
    fi
  done
  return 1
}

# a CUDA torch without draftlink's other dependencies: a venv over it, the rest pip-installed
make_device_venv() {
  local py
  for py in "${candidates[@]}"; do
    if "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      echo "device_check: $py has a CUDA torch; making .venv-device over it" >&2
      "$py" -m venv --system-site-packages .venv-device >&2 || return 1
      local deps
      deps="$(.venv-device/bin/python -c 'import tomllib
d = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(x for x in d if not x.startswith("torch")))')"
      # shellcheck disable=SC2086
      .venv-device/bin/python -m pip install -q $deps >&2 || return 1
      candidates=("$ROOT/.venv-device/bin/python")
      return 0
    fi
  done
  return 1
}

if [[ "$help" == 1 ]]; then
  usage
  if pick; then
    echo
    exec "$PY" -m bench.device_check --help
  fi
  exit 0
fi

if ! pick; then
  if [[ "$dry" == 0 ]] && make_device_venv && pick; then
    :
  else
    echo "device_check: no usable Python found:" >&2
    for r in "${reasons[@]}"; do echo "  $r" >&2; done
    if [[ "$dry" == 0 ]]; then
      echo "  a real run needs a CUDA build of torch; PYTHON=/path/to/python picks one (or --dry-run)" >&2
    fi
    if [[ ! -f common/rpc/gen/verifier_pb2.py ]]; then
      echo "  common/rpc/gen is missing: carry it, or install grpcio-tools (make proto)" >&2
    fi
    exit 3
  fi
fi

echo "device_check: python $PY" >&2
if [[ "$dry" == 0 ]] && command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv >&2 || true
fi
exec "$PY" -m bench.device_check "$@"
