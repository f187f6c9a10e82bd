#!/usr/bin/env bash
# Rounds of `aviary bench` (one or two binaries), ../shared/bench/torch_charlstm.py and
# sample_limit.c side by side, the order reversed every other round: the measurements behind
# docs/performance.md. Prints one JSON line per measurement with "round" and "who" added;
# benches/side-by-side-summary.py turns them into medians and same-round ratios.
# On a 2-core VM whichever ran first in a round was faster, whatever it was: PAUSE seconds
# (default 20) of rest before each run keep that from favouring one side.
# Usage: benches/side-by-side.sh ROUNDS CORPUS TORCH_PYTHON SAMPLE_LIMIT AVIARY [AVIARY_B]
#   (SAMPLE_LIMIT: gcc -O3 -march=native -ffast-math -fopenmp ../shared/bench/sample_limit.c -lm)
set -euo pipefail
rounds=$1 corpus=$2 python=$3 limit=$4; shift 4
script=$(dirname "$0")/../../shared/bench/torch_charlstm.py
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
tag() { python3 -c "import json,sys
for l in sys.stdin:
    try: d = json.loads(l)
    except ValueError: continue
    d.update(round=$1, who='$2'); print(json.dumps(d))"; }
for r in $(seq 1 "$rounds"); do
  runs=()
  for b in "$@"; do runs+=("aviary:$b"); done
  runs+=("torch")
  if [ $((r % 2)) = 0 ]; then mapfile -t runs < <(printf '%s\n' "${runs[@]}" | tac); fi
  for run in "${runs[@]}"; do
    sleep "${PAUSE:-20}"
    case $run in
      aviary:*) AVIARY_HOME=$home "${run#aviary:}" bench --corpus "$corpus" --threads 2 2>/dev/null | tag "$r" "${run#aviary:}" ;;
      torch) "$python" "$script" --corpus "$corpus" --threads 2 2>/dev/null | tag "$r" torch ;;
    esac
  done
  for t in 2 1; do OMP_NUM_THREADS=$t "$limit" | tag "$r" "sample_limit_$t"; done
done
