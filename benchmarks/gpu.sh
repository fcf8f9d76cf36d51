#!/usr/bin/env bash
# The GPU benchmark (benchmarks/gpu.py) as one command for a briefly lent GPU machine that cannot reach a registry.
#
#   bash benchmarks/gpu.sh --download          # here, with the registries: the wheels the GPU image lacks, into .whl/
#   bash benchmarks/gpu.sh [--quick]           # there (the run tool, carry [".whl"]): install .whl/ into
#                                              # /tmp/site, run python3 -m benchmarks.gpu, table to $OUT or results/
#   bash benchmarks/gpu.sh --no-install --quick   # a check of the script on any machine with the project installed
#
# The GPU image already holds JAX with CUDA, Flax, Optax, NumPy, pandas and matplotlib (the device library's
# KINDS.md); what it lacks are the study's own packages, at the versions this checkout was tested with.
set -euo pipefail
cd "$(dirname "$0")/.."

MISSING=(optuna sqlalchemy alembic mako colorlog mlxtend cmaes)

if [[ "${1:-}" == "--download" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    rm -rf .whl
    for name in "${MISSING[@]}"; do
        version=$(python -c "import importlib.metadata as m; print(m.version('$name'))")
        python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$name==$version"
    done
    du -sh .whl
    exit 0
fi

install=1
args=()
for arg in "$@"; do
    if [[ "$arg" == "--no-install" ]]; then install=0; else args+=("$arg"); fi
done
if (( install )); then
    [[ -d .whl ]] || { echo "no .whl/ folder: run 'bash benchmarks/gpu.sh --download' first and carry .whl" >&2; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
output="results/benchmarks/gpu.md"
[[ -n "${OUT:-}" ]] && output="$OUT/gpu.md"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
python3 -m benchmarks.gpu --output "$output" "${args[@]}"
