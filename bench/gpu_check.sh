#!/usr/bin/env bash
# The GPU checks in one script, sized for about 12 minutes on one H100/H200-class GPU:
#   1. the `cuda` tests (pytest -m cuda);
#   2. bench/scale.py --device cuda: every stage's memory at two training-set sizes, and
#      training's img/s against its bare forward+backward floor (full-width ResNet-18, 224 px);
#   3. bench/featurize.py at width 64: TRAK featurization against its floor;
#   4. bench/preset_run.py: a short preset-shaped run (generated ImageFolder at 224 px,
#      full-width ResNet-18, every stage once), with each stage's time.
# Everything it measures lands in $OUT (default gpu_check_out/): one JSON per step, one log per
# step and steps.json (return code and seconds of each). Then, here:
#   .venv/bin/python bench/gpu_hours.py --scale-json gpu_check_out/scale.json
#
# Usage:
#   bash bench/gpu_check.sh --wheels    # where pip reaches an index: the wheels the GPU machine's
#                                       # image lacks, into .whl/ (git-ignored), for Python 3.12
#   bash bench/gpu_check.sh             # on the GPU machine: installs .whl/ if present, runs 1-4
#   bash bench/gpu_check.sh --dry-run   # on a CPU: the same steps at toy sizes (tests the script)
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
case "${1:-}" in
  --wheels) MODE=wheels ;;
  --dry-run) MODE=dry ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--wheels | --dry-run]" >&2; exit 2 ;;
esac

# What the GPU image lacks (it has torch, torchvision, numpy, scipy, scikit-learn, h5py,
# matplotlib, pillow, pyyaml, tqdm): the workflow engine and TRAK, pinned as requirements.txt.
WHEELS="snakemake==9.27.1 snakemake-interface-common snakemake-interface-executor-plugins
snakemake-interface-storage-plugins snakemake-interface-report-plugins snakemake-interface-logger-plugins
snakemake-interface-scheduler-plugins snakemake-executor-plugin-slurm==2.8.0
snakemake-executor-plugin-slurm-jobstep snakemake-storage-plugin-fs traker==0.3.2 appdirs conda-inject
configargparse connection-pool datrie docutils dpath gitpython gitdb smmap humanfriendly immutables
jinja2 markupsafe jsonschema jsonschema-specifications referencing rpds-py attrs nbformat fastjsonschema
jupyter-core traitlets platformdirs packaging psutil pulp pyyaml requests charset-normalizer idna
urllib3 certifi reretry smart-open wrapt tabulate throttler yte argparse-dataclass pytest pytest-timeout
pluggy iniconfig"

if [ "$MODE" = wheels ]; then
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
  mkdir -p .whl
  for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$w" || echo "no wheel for $w" >&2
  done
  du -sh .whl
  exit 0
fi

OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if [ "$MODE" = gpu ] && [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
  export PATH="/tmp/site/bin:$PATH"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
if [ "$MODE" = gpu ]; then
  DEV=cuda; SCALE_N=2048; FEAT="--images 512 --widths 64 --proj-dims 2048 --stock-images 128"
  PRESET="--images 4096 --cores 16"; LIMIT=240
else
  DEV=cpu; SCALE_N=8; FEAT="--images 8 --widths 8 --proj-dims 64 --stock-images 4"
  PRESET="--images 24 --cores 2"; LIMIT=900
fi
"$PY" - <<'EOF' > "$OUT/machine.json" 2>&1
import json, platform, torch
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                  "cuda": torch.cuda.is_available(),
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "cpu_capability": torch.backends.cpu.get_cpu_capability()}, indent=2))
EOF

echo "[" > "$OUT/steps.json"
first=1
step() {   # step NAME COMMAND...: run with a time limit, log to $OUT/NAME.log, record rc and seconds
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "== $name: $*"
  timeout "$LIMIT" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  [ $first = 1 ] || echo "," >> "$OUT/steps.json"
  first=0
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" >> "$OUT/steps.json"
  echo "   rc=$rc in $(( $(date +%s) - t0 )) s; tail:"; tail -n 3 "$OUT/$name.log" | sed 's/^/   /'
}

step cuda_tests "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
step scale "$PY" bench/scale.py --device "$DEV" --n "$SCALE_N" --json "$OUT/scale.json"
step featurize "$PY" bench/featurize.py --device "$DEV" $FEAT --json "$OUT/featurize.json"
step preset_run "$PY" bench/preset_run.py --device "$DEV" $PRESET --json "$OUT/preset_run.json"
echo "]" >> "$OUT/steps.json"
cat "$OUT/steps.json"
