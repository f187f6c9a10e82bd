#!/usr/bin/env python3
"""Counts a blind read: for each BOT, LIST_DIR/BOT.key.json and the reader's answers in
LIST_DIR/BOT.answers ("N: yes" or "N: no" lines). Prints plausible candidates and real tweets.

Usage: score.py LIST_DIR BOT ...
"""
import json, re, sys

out = sys.argv[1]
tot = {"candidate": [0, 0], "real": [0, 0]}
for bot in sys.argv[2:]:
    key = {e["n"]: e for e in json.load(open(f"{out}/{bot}.key.json"))}
    ans = {}
    for line in open(f"{out}/{bot}.answers"):
        m = re.match(r"\s*(\d+)\s*[:.)-]\s*(yes|no)", line, re.I)
        if m:
            ans[int(m.group(1))] = m.group(2).lower() == "yes"
    assert len(ans) == len(key), f"{bot}: {len(ans)} answers for {len(key)} texts"
    per = {"candidate": [0, 0], "real": [0, 0]}
    for n, e in key.items():
        per[e["kind"]][0] += ans[n]
        per[e["kind"]][1] += 1
    for k in per:
        tot[k][0] += per[k][0]; tot[k][1] += per[k][1]
    yes = [key[n]["text"] for n in key if ans[n] and key[n]["kind"] == "candidate"]
    print(f"{bot}: candidates {per['candidate'][0]}/{per['candidate'][1]}, real {per['real'][0]}/{per['real'][1]}; passed: {yes}")
print(f"all: candidates {tot['candidate'][0]}/{tot['candidate'][1]}, real {tot['real'][0]}/{tot['real'][1]}")
