#!/usr/bin/env bash
# Fill a folder with the wheels benchmarks/gpu_check.sh installs on a CUDA machine that has no package index
# (run it where pip can reach PyPI; then carry the folder and pass it as --wheels):
#
#   bash benchmarks/gpu_wheels.sh [DIR]          # default DIR: .whl
#
# trl 1.16.0 (the version the comparison pins) and the dependencies a CUDA image with torch, transformers,
# accelerate, pandas and pyarrow usually lacks: datasets and its pinned dill, multiprocess and fsspec. All are
# pure-Python wheels (multiprocess has one per Python minor version: 3.12 is fetched; set PYVER to change).
set -euo pipefail
DIR="${1:-.whl}"
PYVER="${PYVER:-3.12}"
mkdir -p "$DIR"
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$DIR" \
  "trl==1.16.0" "datasets==5.2.0" "dill==0.4.1" "multiprocess==0.70.19" "fsspec==2026.9.0"
ls -1 "$DIR"
