#!/usr/bin/env bash
# One command on a CUDA machine, within 8 minutes: install what is missing, then benchmarks/gpu_check.py
# (log-prob exactness and dtypes on CUDA in fp32 and bf16, one DPO step against TRL 1.16 in fp32 and bf16,
# throughput and FLOP utilisation of TRL vs preftune with and without prefix sharing on a ~1B decoder built
# from a config). Writes gpu_check.json and gpu_check.md into --out.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--wheels DIR] [--python PY] [--shape 1b|0.5b] [--dry-run] [-- ARGS]
#
# --wheels DIR  a folder of wheels for a machine without a package index (benchmarks/gpu_wheels.sh fills one:
#               trl 1.16.0 and the parts of its dependencies a CUDA image usually lacks); installed with
#               --no-deps into a private folder put first on PYTHONPATH. Without it, pip installs trl==1.16.0
#               from the index if trl is missing. torch is never installed: the machine's CUDA build is used.
# --python PY   the interpreter with CUDA torch (default: python3).
# --dry-run     print what would run, run nothing.
# ARGS after -- go to gpu_check.py (e.g. --steps 6 --repeats 2 --skip-throughput).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="gpu_check_out"
WHEELS=""
PY="python3"
SHAPE="1b"
DRY=0
EXTRA=()
usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --shape) SHAPE="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; usage >&2; exit 64 ;;
  esac
done
if [[ -n "$WHEELS" && ! -d "$WHEELS" ]]; then
  echo "gpu_check.sh: --wheels $WHEELS is not a folder" >&2; exit 64
fi

SITE="${TMPDIR:-/tmp}/preftune_gpu_check_site"
if [[ -n "$WHEELS" ]]; then
  INSTALL=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE")
  INSTALL+=("$WHEELS"/*.whl)
else
  INSTALL=("$PY" -m pip install -q "trl==1.16.0")
fi
RUN=(timeout 470 "$PY" "$REPO/benchmarks/gpu_check.py" --out "$OUT" --shape "$SHAPE" --time-limit 400)
RUN+=("${EXTRA[@]+"${EXTRA[@]}"}")

if [[ $DRY -eq 1 ]]; then
  echo "install: ${INSTALL[*]}"
  echo "run:     PYTHONPATH=$REPO${WHEELS:+:$SITE} ${RUN[*]}"
  exit 0
fi

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" || {
  echo "gpu_check.sh: $PY has no CUDA device (torch.cuda.is_available() is False)" >&2; exit 3; }
if [[ -n "$WHEELS" ]]; then
  "${INSTALL[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
elif ! "$PY" -c "import trl, datasets" 2>/dev/null; then
  "${INSTALL[@]}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 PYTHONUNBUFFERED=1
"$PY" -c "import trl, datasets, transformers, torch; print('torch', torch.__version__, '· transformers', transformers.__version__, '· trl', trl.__version__, '· datasets', datasets.__version__, '·', torch.cuda.get_device_name(0))"
"${RUN[@]}"
