#!/usr/bin/env bash
# The GPU checks of the project on a CUDA machine, stage by stage, each writing its log under OUT_DIR.
#
#   bash benchmarks/gpu_session.sh OUT_DIR [STAGE...]
#        (stages: env native native-memcheck native-bench tests sanitizer racecheck synccheck bench; default: all
#        but racecheck/synccheck, which run only where a kernel needs them, in this order)
#
#   env        -> env.txt          nvidia-smi, compilers, Python packages, what the test suite finds missing
#   native     -> native.txt       the DALI plugin's GPU operators first: their gpu tests (GPU == CPU operator bit
#                 native.xml       for bit, bad records, restores, native == python_function path, GPU == CPU
#                                  pipeline) and the native bench rows' device test
#   native-memcheck -> native-memcheck.txt  compute-sanitizer memcheck over the native operators, DALI's pools
#                 off, the sanitizer's own logs under OUT_DIR/native-memcheck/
#   native-bench -> bench-native.json  fn.kmix_* against fn.copy (chain minus one, interleaved rounds) and the
#                 bench-native.md      "mixed" pipeline at batch 256: native operator, python_function path, none
#   tests      -> pytest-gpu.txt   the whole gpu-marked suite with --require-gpu (no device, CuPy or DALI: it
#                 pytest-gpu.xml   fails and names what is missing), JUnit XML beside it
#   sanitizer  -> sanitizer-memcheck.txt  compute-sanitizer memcheck over a selection of the CuPy kernel suite (a few
#                 memcheck.log     minutes), CuPy without its memory pool; the tool's report and the inner
#                 memcheck-pytest.txt  pytest's output are written as they go (kept if the call is killed)
#   racecheck, synccheck           the same with that tool: only when a kernel uses shared memory or warp
#                                  synchronisation (tests/test_sanitizers.py decides; none does today)
#   bench      -> bench-gpu.json   kernel rows against a device-to-device copy, scaling in K, the "mixed"
#                 bench-gpu.md     pipeline at batch 256, and the GPU targets judged
#
# Every stage fits one 10-minute call of the project's device tool (DEVELOPERS.md says how DALI gets
# there); a stage's exit status is its tool's, and the script goes on to the next stage regardless, then
# exits non-zero if any stage failed. Run from the repository root with PYTHONPATH holding DALI and it.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUT_DIR [env|native|native-memcheck|native-bench|tests|sanitizer|racecheck|synccheck|bench ...]}; shift
mkdir -p "$out"
PY=${PY:-python3}
if [ $# -gt 0 ]; then
  stages=$*
else  # racecheck and synccheck only where a kernel needs them (SANITIZER_TOOLS beyond memcheck)
  extra_tools=$("$PY" -c 'import sys; sys.path.insert(0, "tests"); from test_sanitizers import SANITIZER_TOOLS
print(" ".join(SANITIZER_TOOLS[1:]))' 2>/dev/null)
  stages="env native native-memcheck native-bench tests sanitizer $extra_tools bench"
fi
export PYTHONUNBUFFERED=1
failed=0

stage_env() {
  { date -u; nvidia-smi || true; g++ --version || echo "no g++"; nvcc --version || echo "no nvcc"
    command -v compute-sanitizer || echo "no compute-sanitizer"
    "$PY" - <<'EOF'
import importlib, sys
print(sys.version)
for m in ("numpy", "cupy", "nvidia.dali", "torch", "timm", "skimage", "PIL", "cv2"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as exc:
        print(m, "MISSING:", exc)
sys.path.insert(0, "tests")
from conftest import gpu_problems
print("gpu tests blocked by:", gpu_problems() or "nothing")
EOF
  } > "$out/env.txt" 2>&1
}

# --- the native GPU operators (the DALI plugin's GPU backend), first
stage_native() {
  "$PY" -m pytest -q -m gpu --require-gpu -p no:cacheprovider -rfE --maxfail=25 --junitxml="$out/native.xml" \
    tests/test_plugin.py tests/test_dali.py tests/test_bench_gpu.py \
    -k "gpu_operator or native or gpu_pipeline_equals or restored_gpu" > "$out/native.txt" 2>&1
}

stage_native_memcheck() {
  mkdir -p "$out/native-memcheck"
  "$PY" -m pytest -q -m gpu --require-gpu -p no:cacheprovider -rfE --basetemp="$out/native-memcheck" \
    tests/test_sanitizers.py -k native_gpu_operators > "$out/native-memcheck.txt" 2>&1
}

stage_native_bench() {
  "$PY" - "$out" > "$out/bench-native.log" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
from dali_kmix.apps.bench import FUNCTION_PATH, bench_pipeline, format_table, metadata
from dali_kmix.apps.bench_gpu import bench_native_ops, format_gpu
from dali_kmix.apps.data import make_photo_tree

out = Path(sys.argv[1])
photos = make_photo_tree(Path(".demo") / "bench-photos-gpu", images_per_class=48, size=320)
rows = bench_native_ops(progress=False)
variants = ["none"] + [f"dali_kmix {m}{s}" for m in ("dcutmix", "dmixup") for s in ("", " " + FUNCTION_PATH)]
rows += bench_pipeline(photos, batch=256, iters=12, repeats=7, device="gpu", num_threads=8, progress=False,
                       only=variants)
(out / "bench-native.json").write_text(json.dumps({"meta": metadata(), "rows": rows}, indent=1, default=str))
md = format_table(rows) + "\n\n" + format_gpu(rows)
(out / "bench-native.md").write_text(md + "\n")
print(md)
EOF
}

stage_tests() {
  "$PY" -m pytest -q -m gpu --require-gpu -p no:cacheprovider -rfE --maxfail=25 \
    --junitxml="$out/pytest-gpu.xml" --deselect tests/test_sanitizers.py > "$out/pytest-gpu.txt" 2>&1
}

# One compute-sanitizer tool per call; its own report and the inner pytest's output go straight into $out.
sanitize() {
  DALI_KMIX_SANITIZER_LOG_DIR="$out" "$PY" -m pytest -q -m gpu --require-gpu -p no:cacheprovider -rfE \
    tests/test_sanitizers.py -k "compute_sanitizer and $1" > "$out/sanitizer-$1.txt" 2>&1
  local rc=$?
  if [ $rc -eq 5 ]; then echo "no $1 run: no kernel uses shared memory" >> "$out/sanitizer-$1.txt"; rc=0; fi
  return $rc
}
stage_sanitizer() { sanitize memcheck; }
stage_racecheck() { sanitize racecheck; }
stage_synccheck() { sanitize synccheck; }

stage_bench() {
  "$PY" - "$out" > "$out/bench-gpu.log" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
from dali_kmix.apps.bench import bench_pipeline, format_table, metadata
from dali_kmix.apps.bench_gpu import bench_gpu_ops, bench_gpu_scaling, format_gpu
from dali_kmix.apps.data import make_photo_tree

out = Path(sys.argv[1])
photos = make_photo_tree(Path(".demo") / "bench-photos-gpu", images_per_class=48, size=320)
rows = bench_gpu_ops(progress=False) + bench_gpu_scaling(progress=False)
rows += bench_pipeline(photos, batch=256, iters=12, repeats=7, device="gpu", num_threads=8, progress=False)
(out / "bench-gpu.json").write_text(json.dumps({"meta": metadata(), "rows": rows}, indent=1, default=str))
md = format_table(rows) + "\n\n" + format_gpu(rows)
(out / "bench-gpu.md").write_text(md + "\n")
print(md)
EOF
}

for s in $stages; do
  case $s in
    env|native|native-memcheck|native-bench|tests|sanitizer|racecheck|synccheck|bench) ;;
    *) echo "unknown stage $s (env, native, native-memcheck, native-bench, tests, sanitizer, racecheck, synccheck, bench)"; exit 2 ;;
  esac
  t0=$(date +%s)
  "stage_${s//-/_}"; rc=$?
  echo "stage $s: exit $rc after $(( $(date +%s) - t0 )) s"
  [ $rc -eq 0 ] || failed=1
done
exit $failed
