#!/usr/bin/env bash
# The sorting table: trains the three models (window, infinity, sticky) for MINUTES each
# (default 60) on streams of TRAIN_LENGTHS symbols (default 1000:8000, drawn per sequence,
# with the curriculum of `train --curriculum 1`), learning rate LR (default 1e-3), two at a
# time on a 2-core machine, one thread each; evaluates each at 1,000, 2,000, 4,000,
# 8,000 and 16,000 symbols on 200 held-out sequences per length (generated with seeds that
# training never uses); writes docs/sorting/table.md, docs/sorting/accuracy.png (accuracy
# against stream length) and docs/sorting/training.png (held-out accuracy against training
# time), with the seeds, steps and wall time of each run.
#
#   examples/sorting/run_table.sh              # the full table, about 2 hours
#   MINUTES=2 TRAIN_LENGTHS=200:400 LENGTHS="500 1000" COUNT=20 examples/sorting/run_table.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
minutes=${MINUTES:-60}
train_lengths=${TRAIN_LENGTHS:-1000:8000}
lengths=${LENGTHS:-1000 2000 4000 8000 16000}
count=${COUNT:-200}
seed=${SEED:-1}
lr=${LR:-1e-3}
scripts/install-deps gnuplot-nox

cmake --preset release >/dev/null
cmake --build --preset release --target sorting_task
bin=build/release/examples/sorting/sorting_task
work=build/sorting
out=docs/sorting
mkdir -p "$work" "$out"

for t in $lengths; do
    [[ -s $work/held_out_$t.txt ]] ||
        "$bin" generate --length "$t" --count "$count" --seed $((900000 + t)) \
            --out "$work/held_out_$t.txt"
done

train() {  # $1 model
    local start=$SECONDS
    "$bin" train --model "$1" --length "$train_lengths" --seed "$seed" --minutes "$minutes" \
        --lr "$lr" --curriculum 1 --out "$work/$1.safetensors" | tee "$work/$1.log" | grep --line-buffered -E '^(step|trained)'
    echo "$1 $((SECONDS - start))" >>"$work/wall.txt"
}
evaluate() {  # $1 model, $2 threads: accuracy at every length into $work/$1.eval
    local t
    for t in $lengths; do
        echo "$1 $t $("$bin" eval --model "$work/$1.safetensors" --data "$work/held_out_$t.txt" \
            --threads "$2" | sed -E 's/accuracy=([0-9.]+).*/\1/')"
    done >"$work/$1.eval"
}
rm -f "$work/wall.txt"
train window & train infinity & wait
# sticky trains on one core while the other evaluates the first two
train sticky & { evaluate window 1; evaluate infinity 1; } & wait
evaluate sticky 2
{
    echo "# Sorting: accuracy on held-out sequences"
    echo
    echo "Training: streams of $train_lengths symbols (curriculum), $minutes minutes per model on one"
    echo "core, learning rate $lr, seed $seed; evaluation: $count sequences per length (seeds 900000 + length)."
    echo
    printf '| model | steps | steps/s | wall (s) |'
    for t in $lengths; do printf ' T = %s |' "$t"; done
    echo
    printf '|---|---|---|---|'
    for t in $lengths; do printf -- '---|'; done
    echo
} >"$out/table.md"
for m in window infinity sticky; do
    summary=$(grep '^trained' "$work/$m.log")
    steps=$(sed -E 's/.*: ([0-9]+) steps.*/\1/' <<<"$summary")
    rate=$(sed -E 's/.*\(([0-9.]+) steps\/s\).*/\1/' <<<"$summary")
    wall=$(awk -v m="$m" '$1 == m {print $2}' "$work/wall.txt")
    printf '| %s | %s | %s | %s |' "$m" "$steps" "$rate" "$wall" >>"$out/table.md"
    for t in $lengths; do
        acc=$(awk -v t="$t" '$2 == t {print $3}' "$work/$m.eval")
        printf ' %.1f%% |' "$(awk -v a="$acc" 'BEGIN {print 100 * a}')" >>"$out/table.md"
    done
    echo >>"$out/table.md"
    awk '/^step/ {print $9, $7}' "$work/$m.log" >"$work/$m.training.dat"
done

examples/sorting/plot_accuracy.sh "$out/table.md" "$out/accuracy.png"
gnuplot <<GP
set terminal pngcairo size 800,500
set title "Sorting: held-out accuracy during training"
set ylabel "held-out accuracy"
set output "$out/training.png"
set xlabel "training time (s)"
plot for [m in "window infinity sticky"] "$work/" . m . ".training.dat" with lines title m
GP
cat "$out/table.md"
