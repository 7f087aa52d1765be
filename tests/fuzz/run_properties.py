"""The Hypothesis properties (tests/test_properties*.py) with the long profile, for a given time.

Run by ``tests/fuzz/run.py`` (``make fuzz``). Each property runs in turn, again and again with fresh random
examples (profile "fuzz": ``DALI_KMIX_FUZZ_CHUNK`` times its ``make test`` budget per call), until its share
of the time is spent; failures go to the example database (``.hypothesis/``, replayed first next time) and
are reported at the end -- turn each into an ``@example`` of its property once fixed.

    python tests/fuzz/run_properties.py SECONDS [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def properties():
    """(name, test) of every Hypothesis property of the property modules."""
    os.environ.setdefault("DALI_KMIX_HYPOTHESIS_PROFILE", "fuzz")
    sys.path.insert(0, str(TESTS))
    found = []
    for module_name in ("test_properties", "test_properties_dali"):
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - e.g. no DALI: run what can run
            print(f"run_properties: skipping {module_name}: {type(exc).__name__}: {exc}", flush=True)
            continue
        for name in sorted(dir(module)):
            test = getattr(module, name)
            if name.startswith("test_") and callable(test) and hasattr(test, "hypothesis"):
                found.append((f"{module_name}::{name}", test))
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    from hypothesis.statistics import collector  # what --hypothesis-show-statistics reads

    counts = {"examples": 0}

    def count(stats):  # one call per test run: the test cases of every phase
        counts["examples"] += sum(len(v.get("test-cases", ())) for k, v in stats.items() if k.endswith("-phase"))

    from dali_kmix.backends import plugin

    plugin.load()  # the DALI properties' module fixture, outside pytest
    props = properties()
    deadline = time.monotonic() + args.seconds
    report = {name: {"calls": 0, "examples": 0, "seconds": 0.0, "failure": None} for name, _ in props}
    live = list(props)
    while live and time.monotonic() < deadline:
        for name, test in list(live):
            if time.monotonic() >= deadline:
                break
            start, before = time.monotonic(), counts["examples"]
            try:
                with collector.with_value(count):
                    test()
            except BaseException as exc:  # noqa: BLE001 - a falsified property: report it, go on with the others
                if isinstance(exc, KeyboardInterrupt):
                    raise
                report[name]["failure"] = "".join(traceback.format_exception(exc))[-6000:]
                live.remove((name, test))
                print(f"run_properties: {name} FAILED\n{report[name]['failure']}", flush=True)
            entry = report[name]
            entry["calls"] += 1
            entry["examples"] += counts["examples"] - before
            entry["seconds"] += time.monotonic() - start
    total = sum(e["examples"] for e in report.values())
    failed = [name for name, e in report.items() if e["failure"]]
    for name, e in report.items():
        print(f"run_properties: {name}: {e['examples']} examples in {e['seconds']:.0f} s"
              f"{' FAILED' if e['failure'] else ''}", flush=True)
    print(f"run_properties: {total} examples of {len(report)} properties, {len(failed)} failed", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"examples": total, "failed": failed, "properties": report}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
