#!/usr/bin/env bash
# Makes the four bots docs/quality.md reads (@neiltyson, @TheOnion, @NASA from the sxywu
# collection, @andreruffert's X archive) in a throwaway home, fine-tuned with the defaults.
# Usage: benches/quality/finetune-four.sh AVIARY_BINARY HOME   (needs ../shared/data)
set -euo pipefail
bin=$1 home=$2
data=$(cd "$(dirname "$0")/../../../shared/data" && pwd)
mkdir -p "$home"
run() { "$bin" --home "$home" "$@"; }
for a in neiltyson TheOnion NASA andreruffert; do
  if [ "$a" = andreruffert ]; then src=$data/xarchive-andreruffert; else src=$data/accounts-sxywu-tweety/$a.csv; fi
  run bot new "$a" >/dev/null 2>&1 || true
  run import "$a" "$src"
  /usr/bin/time -f "$a finetune %e s" "$bin" --home "$home" finetune "$a"
  run eval "$a"
done
