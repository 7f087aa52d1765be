#!/bin/sh
# Both studies of the README, one after the other, two runs at a time. Each writes a JSON per
# finished run, so running this again after an interruption continues where it stopped.
#   nohup nice -n 19 benchmarks/run_studies.sh > grid.log 2>&1 &
cd "$(dirname "$0")/.." || exit 1
PY=${PY:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" benchmarks/study_mixing.py
"$PY" benchmarks/study_subsample.py
