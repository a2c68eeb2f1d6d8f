#!/usr/bin/env python3
"""Summarises the runs of scripts/bench's ratio part: medians per implementation from
docs/bench/ratios.csv and subnormal.csv, headed by the machine of ratios_machine.txt,
written as Markdown to docs/bench/ratios.md and between the README's
`<!-- ratios:begin -->` and `<!-- ratios:end -->` markers. A build with no runs (one that
scripts/bench left out) gets no column.

  summarise_ratios.py OUT_DIR README
"""
import csv
import os
import shlex
import statistics
import sys
from collections import defaultdict

# Columns in this order; one with no runs (a build scripts/bench left out) is dropped.
BUILDS = [("default", "default flags (`-O3`)"),
          ("compiled", "default flags, through `infinityformer::compiled`"),
          ("x86-64-v3", "`-march=x86-64-v3`"),
          ("native", "`-march=native`"), ("portable", "default flags + OpenBLAS"),
          ("native-openblas", "`-march=native` + OpenBLAS")]
CONFIGS = [("sorting", "sorting (uniform)"), ("lm", "language model (sticky)")]
STEPS = [("forward", "forward (update + attention)"), ("training", "training step")]
REFERENCES = [("reference", "reference at its best"),
              ("reference-oob", "reference out of the box")]
# ratios_machine.txt's key="value" pairs that the heading names; the others are ltm_chunk's
# own first line (simd=, blas=, ftz=, ...), about our native build.
MACHINE = [("cpu", "CPU"), ("compiler", "compiler"),
           ("reference_openblas_kernel", "OpenBLAS kernel of the reference at its best")]


def medians(path, key_fields, value_field):
    runs = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row[value_field]:
                runs[tuple(row[k] for k in key_fields)].append(float(row[value_field]))
    return {k: (statistics.median(v), len(v)) for k, v in runs.items()}


def machine_text(path):
    """The machine as the heading names it, from scripts/bench's ratios_machine.txt."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        pairs = dict(w.split("=", 1) for w in shlex.split(text) if "=" in w)
    except ValueError:  # unbalanced quotes: as it stands
        return " ".join(text.split())
    named = {key: f"{label}: {pairs.pop(key)}" for key, label in MACHINE if pairs.get(key)}
    if pairs:  # after the compiler
        named["compiler+"] = "our native build: " + ", ".join(f"{key} {value}"
                                                            for key, value in pairs.items())
    order = [key for key, _ in MACHINE[:2]] + ["compiler+"] + [key for key, _ in MACHINE[2:]]
    return "; ".join(named[key] for key in order if key in named)


def fmt(ms):
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def main():
    out, readme = sys.argv[1], sys.argv[2]
    m = medians(os.path.join(out, "ratios.csv"),
                ("config", "step", "streams", "threads", "build"), "ms_per_step")
    machine = machine_text(os.path.join(out, "ratios_machine.txt"))

    def has(build, streams="1", threads="1"):
        return any(k[2:5] == (streams, threads, build) for k in m)

    refs = [r for r in REFERENCES if has(r[0])]
    builds = [b for b in BUILDS if has(b[0])]
    lines = [f"{machine}.", "",
             "Milliseconds per step, median of the rounds (each round runs every "
             "implementation once, alternated); in brackets the time of the reference at its "
             "best divided by ours" + ("" if has("reference") else
                                       " (no REFERENCE_DIR: no reference runs)") +
             ". The reference (the authors' module, PyTorch from Debian on OpenBLAS) runs at "
             "its best (glibc's allocator reusing its memory, as a caching allocator does: "
             "`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`; OpenBLAS "
             "on the kernel named above) and out of the box (the caller's environment). Our "
             "builds: CMake's Release flags (`-O3 -DNDEBUG`) plus the flags in each column's "
             "heading, the `-march` ones with `-mtune=generic`; the compiled library is built "
             "per x86-64 level and the loader picked the best this CPU has.", "",
             "**One stream, one thread.**", "",
             "| configuration | step | " + " | ".join(r[1] for r in refs + builds) + " |",
             "|---|---|" + "---|" * len(refs + builds)]
    for c, cname in CONFIGS:
        for s, sname in STEPS:
            ref = m.get((c, s, "1", "1", "reference"))
            cells = []
            for r, _ in refs:
                ms = m.get((c, s, "1", "1", r))
                cells.append(fmt(ms[0]) if ms else "—")
            for b, _ in builds:
                ours = m.get((c, s, "1", "1", b))
                if ours is None:
                    cells.append("—")
                elif ref:
                    cells.append(f"{fmt(ours[0])} ({ref[0] / ours[0]:.2f}×)")
                else:
                    cells.append(fmt(ours[0]))
            lines.append(f"| {cname} | {sname} | " + " | ".join(cells) + " |")
    # One stream on 2 threads against 1: a row per implementation measured on both.
    threaded = [(b, label) for b, label in REFERENCES[:1] + BUILDS if has(b, "1", "2")]
    if any(b != "reference" for b, _ in threaded):
        lines += ["", "**One stream on two threads** against one (ours: `ltm_chunk --threads "
                  "2 --streams 1`, whatever threads the build gives one stream; the reference "
                  "at its best with 2 PyTorch and OpenBLAS threads); in brackets the time of "
                  "the reference at its best on 2 threads divided by ours on 2.", "",
                  "| configuration | step | implementation | 1 thread | 2 threads | "
                  "speed-up of 2 threads |", "|---|---|---|---|---|---|"]
        for c, cname in CONFIGS:
            for s, sname in STEPS:
                r2 = m.get((c, s, "1", "2", "reference"))
                for b, label in threaded:
                    one = m.get((c, s, "1", "1", b))
                    two = m.get((c, s, "1", "2", b))
                    if not two:
                        continue
                    ratio = f" ({r2[0] / two[0]:.2f}×)" if r2 and b != "reference" else ""
                    speedup = f"{one[0] / two[0]:.2f}×" if one else "—"
                    lines.append(f"| {cname} | {sname} | {label} | "
                                 f"{fmt(one[0]) if one else '—'} | {fmt(two[0])}{ratio} | "
                                 f"{speedup} |")
    if has("native", "8", "1"):
        lines += ["", "**A batch of 8 streams per step** (native build; the reference runs "
                  "the 8 as one batch, on one thread).", "",
                  "| configuration | step | reference, batch of 8 | ours, 1 thread | ours, 2 "
                  "threads | speed-up of 2 threads |", "|---|---|---|---|---|---|"]
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
