#!/usr/bin/env python3
"""Medians and same-round ratios from benches/side-by-side.sh's output (standard input).

Usage: benches/side-by-side.sh ... | tee rounds.jsonl | benches/side-by-side-summary.py
"""
import collections, json, statistics, sys

by = collections.defaultdict(dict)  # (what, streams) -> who -> {round: chars/s}
for line in sys.stdin:
    d = json.loads(line)
    if "chars_per_s" not in d:
        continue
    key = d["what"] if d["what"] != "generate" else f"generate x{d['streams']}"
    if d["what"] == "sample_limit":
        key = f"sample_limit, {d['threads']} threads"
    by[key][d["who"]] = by[key].get(d["who"], {}) | {d["round"]: d["chars_per_s"]}


def ratio(a, b):
    rs = [a[r] / b[r] for r in a if r in b]
    return f"{statistics.median(rs):.2f}x ({min(rs):.2f} - {max(rs):.2f}, {len(rs)} rounds)"


for key, whos in by.items():
    print(key)
    for who, vals in whos.items():
        print(f"  {who}: median {statistics.median(vals.values()):,.0f} chars/s")
    names = list(whos)
    for a in names:
        for b in names:
            if a < b and "sample_limit" not in key:
                print(f"  {a} / {b}: {ratio(whos[a], whos[b])}")
limit = by.get("sample_limit, 2 threads", {}).get("sample_limit_2")
if limit:
    for who, vals in by.get("generate x1", {}).items():
        if who != "torch":
            print(f"1 stream, {who} / sample_limit 2 threads: {ratio(vals, limit)}")
