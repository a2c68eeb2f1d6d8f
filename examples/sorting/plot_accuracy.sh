#!/usr/bin/env bash
# Draws the accuracy figure of the sorting showcase from its table:
#   examples/sorting/plot_accuracy.sh docs/sorting/table.md docs/sorting/accuracy.png
# One line per model (the rows of the table's "| model | steps | … | T = … |" part) against
# the stream length, and the 18% that a model reaches which ignores the stream and only
# avoids repeating the targets it was given (docs/sorting/README.md). run_table.sh calls it after training.
set -euo pipefail
table=$1
png=$2
data=$(mktemp)
trap 'rm -f "$data"' EXIT
# "| model | steps | steps/s | wall | 14.6% | …" -> "model T accuracy" per cell, T from the header.
awk -F'|' '
    /^\| model/ { for (i = 6; i < NF; ++i) { t = $i; gsub(/[^0-9]/, "", t); len[i] = t }; next }
    /^\|---/ { next }
    /^\| [a-z]/ {
        m = $2; gsub(/ /, "", m)
        for (i = 6; i < NF; ++i) { a = $i; gsub(/[ %]/, "", a); print m, len[i], a / 100 }
    }' "$table" > "$data"
gnuplot <<GP
set terminal pngcairo size 800,500
set output "$png"
set title "Sorting: held-out accuracy against stream length (200 sequences per length)"
set logscale x 2
set xlabel "stream length T (symbols)"
set ylabel "accuracy"
set yrange [0:*]
set xrange [800:20000]
set key bottom left
plot for [m in "window infinity sticky"] "< awk -v m=" . m . " '\\\$1 == m {print \\\$2, \\\$3}' $data" \
         with linespoints lw 2 title m, \
     0.18 with lines dt 2 lc rgb "gray40" title "ignores the stream (18%)"
GP
