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

BUILDS = [("default", "default flags (`-O3`)"),
          ("compiled", "default flags, `infinityformer::compiled`"),
          ("x86-64-v3", "`-march=x86-64-v3`"),
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
    builds = [b for b in BUILDS if any(k[4] == b[0] and k[2:4] == ("1", "1") for k in m)]
    lines = [f"Machine: {machine}. Milliseconds per step, median of the rounds (each round "
             "runs every implementation once, alternated); in brackets the time of the "
             "reference at its best divided by ours" + ("" if have_ref else
                                                        " (no REFERENCE_DIR: no reference runs)") +
             ". The reference (the authors' module, PyTorch from Debian on OpenBLAS) runs at "
             "its best (glibc's allocator reusing its memory, as a caching allocator does; "
             "OpenBLAS choosing its kernel for the CPU) and out of the box (the caller's "
             "environment). Our builds: g++, `-O3` plus the flags named; the compiled library "
             "is built per x86-64 level and the loader picked the best this CPU has.", "",
             "**One stream, one thread.**", "",
             "| configuration | step | reference at its best | reference out of the box | " +
             " | ".join(b[1] for b in builds) + " |",
             "|---|---|---|---|" + "---|" * len(builds)]
    for c, cname in CONFIGS:
        for s, sname in STEPS:
            ref = m.get((c, s, "1", "1", "reference"))
            oob = m.get((c, s, "1", "1", "reference-oob"))
            cells = []
            for b, _ in builds:
                ours = m.get((c, s, "1", "1", b))
                if ours is None:
                    cells.append("—")
                elif ref:
                    cells.append(f"{fmt(ours[0])} ({ref[0] / ours[0]:.2f}×)")
                else:
                    cells.append(fmt(ours[0]))
            lines.append(f"| {cname} | {sname} | {fmt(ref[0]) if ref else '—'} | "
                         f"{fmt(oob[0]) if oob else '—'} | " + " | ".join(cells) + " |")
    if any(k[2:5] == ("1", "2", "compiled") for k in m):
        lines += ["", "**One stream on two threads** (the reference at its best with 2 PyTorch "
                  "and OpenBLAS threads; ours through the compiled library with "
                  "`set_num_threads(2)`).", "",
                  "| configuration | step | reference, 1 thread | reference, 2 threads | "
                  "ours, 1 thread | ours, 2 threads | speed-up of 2 threads: reference, ours |",
                  "|---|---|---|---|---|---|---|"]
        for c, cname in CONFIGS:
            for s, sname in STEPS:
                r1 = m.get((c, s, "1", "1", "reference"))
                r2 = m.get((c, s, "1", "2", "reference"))
                o1 = m.get((c, s, "1", "1", "compiled"))
                o2 = m.get((c, s, "1", "2", "compiled"))
                if not (o1 and o2):
                    continue
                ratio = f" ({r2[0] / o2[0]:.2f}×)" if r2 else ""
                sr = f"{r1[0] / r2[0]:.2f}×" if r1 and r2 else "—"
                lines.append(f"| {cname} | {sname} | {fmt(r1[0]) if r1 else '—'} | "
                             f"{fmt(r2[0]) if r2 else '—'} | {fmt(o1[0])} | "
                             f"{fmt(o2[0])}{ratio} | {sr}, {o1[0] / o2[0]:.2f}× |")
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
