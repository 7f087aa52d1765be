"""``make fuzz``: coverage-guided fuzzing of the native code under ASan/UBSan, and the long Hypothesis profile.

    python tests/fuzz/run.py SECONDS [--cxx clang++-19] [--only host,native,properties] [--out build/fuzz]

Three fuzzers share SECONDS (30 % / 40 % / 30 %); builds are not counted:

* ``host``: tests/fuzz/kmix_host_fuzz.cpp, a libFuzzer harness linked with the host kernels
  (kernels/kmix_host.cpp), all of it built with ``clang -fsanitize=fuzzer,address,undefined``;
* ``native``: tests/fuzz/fuzz_native_ops.py, Atheris driving ``fn.kmix_dmixup`` / ``fn.kmix_dcutmix`` /
  ``fn.kmix_mix`` in DALI pipelines, the plugin built with clang, ASan, UBSan and libFuzzer's coverage
  counters (``DALI_KMIX_SANITIZE=fuzzer``) and atheris's ``asan_with_fuzzer.so`` preloaded: libFuzzer is
  guided by the operator's own native branches (record validation and kernels);
* ``properties``: tests/fuzz/run_properties.py, every Hypothesis property with fresh random examples.

Corpora, crash inputs and the figures (summary.json) go under ``--out``; the corpora are reused by the
next run. Exit status 1 when any fuzzer found something (a crash, a sanitizer report, a failed check).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def numpy_random():
    """dali_kmix.backends.build.numpy_random: the flags and libraries kmix_draw.h needs."""
    sys.path.insert(0, str(ROOT))
    from dali_kmix.backends.build import numpy_random as flags

    return flags()
SHARES = {"host": 0.3, "native": 0.4, "properties": 0.3}
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-sanitize=vptr"]


def libfuzzer_figures(log: str) -> dict:
    """Runs, coverage (edges, features), corpus size and speed from a libFuzzer log."""
    out = {}
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    if runs:
        out["inputs"] = int(runs[-1])
    status = re.findall(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/\S+.*?exec/s: (\d+)", log)
    if status:
        n, cov, ft, corp, speed = status[-1]
        out.update(edges=int(cov), features=int(ft), corpus=int(corp), exec_per_s=int(speed))
        out.setdefault("inputs", int(n))
    modules = re.findall(r"Loaded \d+ modules\s+\((\d+) inline 8-bit counters\)", log)
    if modules:
        out["instrumented_edges"] = sum(int(m) for m in modules)
    return out


def run_logged(cmd, log_path: Path, env=None, timeout=None) -> tuple[int, str]:
    print("+", " ".join(map(str, cmd)), flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(list(map(str, cmd)), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                              timeout=timeout)
    text = log_path.read_text(errors="replace")
    return proc.returncode, text


def finding(rc: int, log: str) -> str | None:
    """What a fuzzer found, from its exit status and log (None: nothing)."""
    if rc == 0:
        return None
    for pattern in (r"ERROR: AddressSanitizer: .*", r"runtime error: .*", r"SUMMARY: .*",
                    r"=== Uncaught Python exception: ===\s*\n.*", r"ERROR: libFuzzer: .*", r"check failed: .*"):
        m = re.search(pattern, log)
        if m:
            return m.group(0).strip()[:500]
    return f"exit status {rc}: {log[-500:]}"


def host(seconds, out: Path, cxx: str) -> dict:
    exe = out / "kmix_host_fuzz"
    kernels = ROOT / "kernels"
    np_flags, np_libs, _ = numpy_random()  # kmix_draw.h: NumPy's headers and libnpyrandom.a
    build = [cxx, "-std=c++17", "-O1", "-g", "-ffp-contract=off", "-fno-fast-math", "-pthread", "-fsanitize=fuzzer",
             *SANITIZE, f"-I{kernels}", *np_flags, HERE / "kmix_host_fuzz.cpp", kernels / "kmix_host.cpp", *np_libs,
             "-o", exe]
    rc, log = run_logged(build, out / "host-build.log")
    if rc:
        raise SystemExit(f"building the host harness failed:\n{log[-3000:]}")
    corpus, artifacts = out / "corpus" / "host", out / "artifacts" / "host"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    rc, log = run_logged([exe, f"-max_total_time={int(seconds)}", "-print_final_stats=1", "-timeout=30", "-len_control=10",
                          "-rss_limit_mb=4096", f"-artifact_prefix={artifacts}/", corpus], out / "host.log",
                         timeout=seconds + 300)
    return {**libfuzzer_figures(log), "finding": finding(rc, log), "log": str(out / "host.log"),
            "kernel_coverage": host_coverage(out, cxx, corpus)}


def host_coverage(out: Path, cxx: str, corpus: Path):
    """Line and branch coverage of the kernel sources by the host corpus (llvm-cov), or None without the tools."""
    suffix = re.search(r"(-\d+)$", cxx)
    profdata, cov = (shutil.which(f"llvm-{tool}{suffix.group(1) if suffix else ''}") for tool in ("profdata", "cov"))
    if not (profdata and cov):
        return None
    kernels = ROOT / "kernels"
    exe, raw, merged = out / "kmix_host_cov", out / "host.profraw", out / "host.profdata"
    np_flags, np_libs, _ = numpy_random()
    rc, log = run_logged([cxx, "-std=c++17", "-O0", "-ffp-contract=off", "-pthread", "-fsanitize=fuzzer",
                          "-fprofile-instr-generate", "-fcoverage-mapping", f"-I{kernels}", *np_flags,
                          HERE / "kmix_host_fuzz.cpp", kernels / "kmix_host.cpp", *np_libs, "-o", exe],
                         out / "host-cov-build.log")
    if rc:
        return None
    subprocess.run([str(exe), "-runs=0", str(corpus)], env=dict(os.environ, LLVM_PROFILE_FILE=str(raw)),
                   capture_output=True)
    subprocess.run([profdata, "merge", "-o", str(merged), str(raw)], check=True)
    files = [kernels / name for name in ("kmix_blend.cu", "kmix_boxes.cu", "kmix_saliency.cu", "kmix_host.cpp")]
    report = subprocess.run([cov, "report", str(exe), f"-instr-profile={merged}", *map(str, files)],
                            capture_output=True, text=True).stdout
    (out / "host-coverage.txt").write_text(report)
    figures = {}
    for line in report.splitlines():  # name, regions, missed, %, functions, missed, %, lines, missed, %, ...
        cells = line.split()
        if cells and cells[0].endswith((".cu", ".cpp")) and len(cells) >= 13:
            figures[cells[0]] = {"lines": cells[9], "branches": cells[12]}
    return figures


def native_env(cxx: str) -> dict:
    import atheris

    env = dict(os.environ, CXX=cxx, DALI_KMIX_SANITIZE="fuzzer", DALI_KMIX_NO_GPU="1",
               ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:allocator_may_return_null=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1", PYTHONPATH=str(ROOT))
    # ASan's __cxa_throw interceptor needs the real libstdc++ resolvable at start-up (DALI_ENFORCE throws).
    libstdcxx = subprocess.run(["g++", "-print-file-name=libstdc++.so"], capture_output=True, text=True).stdout.strip()
    preload = [str(Path(atheris.path()) / "asan_with_fuzzer.so")]
    if os.path.isabs(libstdcxx):
        preload.append(os.path.realpath(libstdcxx))
    env["LD_PRELOAD"] = ":".join(preload)
    return env


def native(seconds, out: Path, cxx: str) -> dict:
    env = native_env(cxx)
    # build the instrumented plugin first (not counted), without the sanitizer runtime preloaded
    build_env = {k: v for k, v in env.items() if k != "LD_PRELOAD"}
    rc, log = run_logged([sys.executable, "-c", "from dali_kmix.backends import plugin; print(plugin.build())"],
                         out / "native-build.log", env=build_env)
    if rc:
        raise SystemExit(f"building the instrumented plugin failed:\n{log[-3000:]}")
    corpus, artifacts = out / "corpus" / "native", out / "artifacts" / "native"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    rc, log = run_logged([sys.executable, HERE / "fuzz_native_ops.py", f"-max_total_time={int(seconds)}",
                          "-print_final_stats=1", "-timeout=120", "-rss_limit_mb=8192", "-len_control=10",
                          f"-artifact_prefix={artifacts}/", corpus], out / "native.log", env=env,
                         timeout=seconds + 600)
    figures = libfuzzer_figures(log)
    stats = re.findall(r"fuzz_native_ops: (\{.*\})", log)
    if stats:
        figures["outcomes"] = stats[-1]
    return {**figures, "finding": finding(rc, log), "log": str(out / "native.log")}


def properties(seconds, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), DALI_KMIX_HYPOTHESIS_PROFILE="fuzz",
               DALI_KMIX_HYPOTHESIS_DB=str(ROOT / ".hypothesis" / "examples"), PYTHONWARNINGS="ignore::RuntimeWarning")
    figures = out / "properties.json"
    rc, log = run_logged([sys.executable, HERE / "run_properties.py", seconds, "--json", figures],
                         out / "properties.log", env=env, timeout=seconds + 900)
    data = json.loads(figures.read_text()) if figures.is_file() else {}
    return {"inputs": data.get("examples"), "properties": len(data.get("properties", {})),
            "finding": ("failed: " + ", ".join(data["failed"])) if data.get("failed") else
            (None if rc == 0 else f"exit status {rc}: {log[-500:]}"), "log": str(out / "properties.log")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("seconds", type=float, help="total fuzzing time (builds not counted)")
    parser.add_argument("--cxx", default=os.environ.get("FUZZ_CXX", "clang++-19"))
    parser.add_argument("--only", default="host,native,properties")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SHARES)
    if unknown:
        parser.error(f"--only takes {sorted(SHARES)}, got {sorted(unknown)}")
    if ({"host", "native"} & set(only)) and not shutil.which(args.cxx):
        raise SystemExit(f"{args.cxx} not found: `make fuzz-deps` installs clang 19 and its sanitizer runtimes")
    args.out.mkdir(parents=True, exist_ok=True)
    share = sum(SHARES[s] for s in only)
    summary = {"seconds": args.seconds, "cxx": args.cxx, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for name in only:
        seconds = args.seconds * SHARES[name] / share
        start = time.monotonic()
        result = {"host": lambda: host(seconds, args.out, args.cxx),
                  "native": lambda: native(seconds, args.out, args.cxx),
                  "properties": lambda: properties(seconds, args.out)}[name]()
        result["wall_seconds"] = round(time.monotonic() - start)
        summary[name] = result
        print(f"fuzz {name}: {json.dumps(result)}", flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    found = {name: summary[name]["finding"] for name in only if summary[name].get("finding")}
    print(f"fuzz: {'FOUND ' + json.dumps(found) if found else 'nothing found'}; figures in {args.out / 'summary.json'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
