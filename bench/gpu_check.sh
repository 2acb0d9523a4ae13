#!/usr/bin/env bash
# The GPU checks in one script for one H100/H200-class GPU, each step with its own time limit
# (540 s in all, so one device call of 600 s holds it; the sizes are estimates, not yet run there):
#   1. the `cuda` tests (pytest -m cuda);
#   2. bench/scale.py --device cuda: every stage's memory at two training-set sizes, and
#      training's img/s against its bare forward+backward floor (full-width ResNet-18, 224 px);
#   3. bench/featurize.py at width 64: TRAK featurization against its floor;
#   4. bench/preset_run.py: a short preset-shaped run (generated ImageFolder at 224 px,
#      full-width ResNet-18, every stage once), with each stage's time.
# Everything it measures lands in $OUT (default gpu_check_out/; the device tool's own $OUT there):
# machine.json, one JSON per benchmark, steps.json (return code and seconds of each step) and
# logs.txt (every step's output): six files. Then, here:
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
# matplotlib, pillow, pyyaml, tqdm, pytest, pytest-timeout): the dependency closure of snakemake,
# its SLURM plugin and traker as installed by requirements.txt, minus the image's packages.
WHEELS="annotated-types==0.8.0 argparse-dataclass==2.0.0 conda-inject==1.3.2 configargparse==1.9.0
connection-pool==0.0.3 docutils==0.22.4 dpath==2.2.0 fastjsonschema==2.22.3 gitdb==4.0.12 gitpython==3.2.1
greenlet==3.5.6 humanfriendly==10.0 immutables==0.21 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
jupyter-core==5.9.1 nbformat==5.11.1 platformdirs==4.14.9 pulp==3.3.2 pydantic==2.14.4 pydantic-core==2.50.5
referencing==0.37.0 rpds-py==2026.9.1 smart-open==7.7.1 smmap==5.0.3 snakemake==9.27.1
snakemake-executor-plugin-slurm==2.8.0 snakemake-executor-plugin-slurm-jobstep==0.6.1
snakemake-interface-common==1.23.0 snakemake-interface-executor-plugins==9.4.0
snakemake-interface-logger-plugins==2.1.0 snakemake-interface-report-plugins==1.3.0
snakemake-interface-scheduler-plugins==2.0.2 snakemake-interface-storage-plugins==4.4.1 sqlalchemy==2.0.58
sqlmodel==0.0.37 tenacity==9.2.1 throttler==1.2.3 traitlets==5.16.1 traker==0.3.2 typing-inspection==0.4.5
tzdata==2026.6 yte==1.9.4"

if [ "$MODE" = wheels ]; then
  mkdir -p .whl
  for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$w" 2>/dev/null \
      || python3 -m pip wheel -q --no-deps -w .whl "$w" \
      || echo "no wheel for $w" >&2                           # sdist-only, pure Python: built here
  done
  du -sh .whl
  exit 0
fi

OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
: > "$OUT/logs.txt"
PY="${PYTHON:-python3}"
if [ "$MODE" = gpu ] && [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
  export PATH="/tmp/site/bin:$PATH"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
if [ "$MODE" = gpu ]; then
  DEV=cuda; SCALE_N=1024; FEAT="--images 512 --widths 64 --proj-dims 2048 --stock-images 128"
  PRESET="--images 4096 --cores 16"; LIMIT_SCALE=1     # 540 s at most: one device call of 600 s
else
  DEV=cpu; SCALE_N=8; FEAT="--images 8 --widths 8 --proj-dims 64 --stock-images 4"
  PRESET="--images 16 --cores 2"; LIMIT_SCALE=5       # a CPU is slower
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
step() {   # step NAME SECONDS COMMAND...: run within SECONDS (x LIMIT_SCALE), append its output to
           # $OUT/logs.txt, record rc and seconds
  local name=$1 limit=$(( $2 * LIMIT_SCALE )); shift 2
  local t0; t0=$(date +%s)
  local log; log=$(mktemp)
  echo "== $name: $*"
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  { echo "======== $name (rc=$rc): $*"; cat "$log"; } >> "$OUT/logs.txt"
  [ $first = 1 ] || echo "," >> "$OUT/steps.json"
  first=0
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" >> "$OUT/steps.json"
  echo "   rc=$rc in $(( $(date +%s) - t0 )) s; tail:"; tail -n 3 "$log" | sed 's/^/   /'
  rm -f "$log"
}

step cuda_tests 90 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
step scale 180 "$PY" bench/scale.py --device "$DEV" --n "$SCALE_N" --json "$OUT/scale.json"
step featurize 90 "$PY" bench/featurize.py --device "$DEV" $FEAT --json "$OUT/featurize.json"
step preset_run 180 "$PY" bench/preset_run.py --device "$DEV" $PRESET --json "$OUT/preset_run.json"
echo "]" >> "$OUT/steps.json"
cat "$OUT/steps.json"
