#!/usr/bin/env python3
"""Summarises the runs of scripts/bench's ratio part: medians per implementation from
docs/bench/ratios.csv and subnormal.csv, written as Markdown to docs/bench/ratios.md and
between the README's `<!-- ratios:begin -->` and `<!-- ratios:end -->` markers.

  summarise_ratios.py OUT_DIR README
"""
import csv
import os
import statistics
import sys
from collections import defaultdict

BUILDS = [("default", "default flags (`-O3`)"), ("x86-64-v3", "`-march=x86-64-v3`"),
          ("native", "`-march=native`"), ("portable", "default flags + OpenBLAS"),
          ("native-openblas", "`-march=native` + OpenBLAS")]
CONFIGS = [("sorting", "sorting (uniform)"), ("lm", "language model (sticky)")]
STEPS = [("forward", "forward (update + attention)"), ("training", "training step")]


def medians(path, key_fields, value_field):
    runs = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row[value_field]:
                runs[tuple(row[k] for k in key_fields)].append(float(row[value_field]))
    return {k: (statistics.median(v), len(v)) for k, v in runs.items()}


def fmt(ms):
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def main():
    out, readme = sys.argv[1], sys.argv[2]
    m = medians(os.path.join(out, "ratios.csv"),
                ("config", "step", "streams", "threads", "build"), "ms_per_step")
    with open(os.path.join(out, "ratios_machine.txt"), encoding="utf-8") as f:
        machine = " ".join(line.strip() for line in f)
    have_ref = any(k[4] == "reference" for k in m)
    lines = [f"Machine and native build: {machine}. Milliseconds per step, median of the "
             "rounds (each round runs every implementation once, alternated); in brackets the "
             "reference's time divided by ours" + ("" if have_ref else
                                                   " (no REFERENCE_DIR: no reference runs)") +
             ".", "",
             "**One stream, one thread.**", "",
             "| configuration | step | reference | " + " | ".join(b[1] for b in BUILDS) + " |",
             "|---|---|---|" + "---|" * len(BUILDS)]
    for c, cname in CONFIGS:
        for s, sname in STEPS:
            ref = m.get((c, s, "1", "1", "reference"))
            cells = []
            for b, _ in BUILDS:
                ours = m.get((c, s, "1", "1", b))
                if ours is None:
                    cells.append("—")
                elif ref:
                    cells.append(f"{fmt(ours[0])} ({ref[0] / ours[0]:.2f}×)")
                else:
                    cells.append(fmt(ours[0]))
            lines.append(f"| {cname} | {sname} | {fmt(ref[0]) if ref else '—'} | " +
                         " | ".join(cells) + " |")
    lines += ["", "**A batch of 8 streams per step** (native build; the reference runs the "
              "8 as one batch, on one thread).", "",
              "| configuration | step | reference, batch of 8 | ours, 1 thread | ours, 2 threads "
              "| speed-up of 2 threads |", "|---|---|---|---|---|---|"]
    for c, cname in CONFIGS:
        for s, sname in STEPS:
            ref = m.get((c, s, "8", "1", "reference"))
            one = m.get((c, s, "8", "1", "native"))
            two = m.get((c, s, "8", "2", "native"))
            if not one:
                continue
            r1 = f" ({ref[0] / one[0]:.2f}×)" if ref else ""
            r2 = f" ({ref[0] / two[0]:.2f}×)" if ref and two else ""
            speedup = f"{one[0] / two[0]:.2f}×" if two else "—"
            lines.append(f"| {cname} | {sname} | {fmt(ref[0]) if ref else '—'} | "
                         f"{fmt(one[0])}{r1} | {fmt(two[0]) + r2 if two else '—'} | "
                         f"{speedup} |")
    sub_path = os.path.join(out, "subnormal.csv")
    if os.path.exists(sub_path):
        sm = medians(sub_path, ("dtype", "sampling", "ftz"), "ms_per_chunk")
        lines += ["", "**Subnormal numbers** (native build, forward, language-model shapes and "
                  "widths; flush-to-zero and denormals-are-zero set in MXCSR or not).", "",
                  "| scalar | uniform | sticky | sticky / uniform | uniform, FTZ | sticky, FTZ |",
                  "|---|---|---|---|---|---|"]
        for dt in ("float", "double"):
            u, st = sm.get((dt, "uniform", "0")), sm.get((dt, "sticky", "0"))
            uf, sf = sm.get((dt, "uniform", "1")), sm.get((dt, "sticky", "1"))
            if not (u and st):
                continue
            lines.append(f"| {dt} | {fmt(u[0])} | {fmt(st[0])} | {st[0] / u[0]:.2f} | "
                         f"{fmt(uf[0]) if uf else '—'} | {fmt(sf[0]) if sf else '—'} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "ratios.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(readme, encoding="utf-8") as f:
        doc = f.read()
    begin, end = "<!-- ratios:begin -->", "<!-- ratios:end -->"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        with open(readme, "w", encoding="utf-8") as f:
            f.write(head + begin + "\n" + text + end + tail)
    else:
        print(f"{readme} has no {begin} ... {end} block; the table is in ratios.md",
              file=sys.stderr)


if __name__ == "__main__":
    main()
