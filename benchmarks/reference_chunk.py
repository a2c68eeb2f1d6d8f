#!/usr/bin/env python3
"""reference_chunk: time the authors' long-term attention module per chunk, at the shapes
that ltm_chunk times, and print `ms_per_chunk=X` the same way.

The module is loaded from a checkout of the authors' repository (REFERENCE_DIR or
--reference-dir): `sorting/long_term_attention.py` for the sorting configuration (uniform
sampling, tau 0.75), `finetune_gpt2/src/transformers/models/gpt2/long_term_attention.py`
for the language-model one (sticky memories, tau 0.5). Nothing of it is part of this
project: it is read from that directory at run time, with its hard-coded device 'cuda'
replaced by 'cpu', and with stand-ins for two imports it never uses on this path (entmax,
matplotlib) when they are not installed.

  reference_chunk.py --sticky 0|1 [--d-model 300] [--heads 6] [--chunk 1024]
                     [--basis 512] [--chunks 20] [--backward 0|1] [--streams 1]
                     [--threads 1]

One chunk is the module's forward (memory update + attention of the chunk's L queries +
output projection); with --backward 1 also the backward of
loss = sum(Y * dY) + kl_weight * sum(KL) with random dY, as ltm_chunk --backward 1 does.
--streams S runs a batch of S streams in one call. --threads T (default 1) gives PyTorch T
threads (torch.set_num_threads; set OPENBLAS_NUM_THREADS to T too, for its products).
"""
import argparse
import ctypes
import importlib.util
import os
import statistics
import sys
import time
import types

import torch

SORTING = "sorting"
GPT2 = os.path.join("finetune_gpt2", "src", "transformers", "models", "gpt2")


def stub_missing(name, attributes):
    """Registers an empty module `name` with the given attributes if it cannot be imported."""
    try:
        importlib.import_module(name)
    except ImportError:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in sys.modules:
                sys.modules[sub] = types.ModuleType(sub)
        for attribute in attributes:
            setattr(sys.modules[name], attribute, type(attribute, (), {}))


def load_package(directory, package):
    """Loads every *.py the module needs from `directory` as `package`, on the CPU."""
    pkg = types.ModuleType(package)
    pkg.__path__ = [directory]
    sys.modules[package] = pkg
    for name in ("basis_functions", "continuous_softmax", "continuous_sparsemax",
                 "long_term_attention"):
        path = os.path.join(directory, name + ".py")
        with open(path, encoding="utf-8") as f:
            source = f.read().replace("'cuda'", "'cpu'")
        # The sorting files import their siblings by plain name, the GPT-2 ones relatively.
        full = package + "." + name
        module = types.ModuleType(full)
        module.__file__ = path
        module.__package__ = package
        sys.modules[full] = module
        sys.modules.setdefault(name, module)
        exec(compile(source, path, "exec"), module.__dict__)
        setattr(pkg, name, module)
    return pkg.long_term_attention


def openblas_core(libs):
    """The kernel OpenBLAS chose for this CPU (or OPENBLAS_CORETYPE named), or None."""
    for path in sorted(libs):
        if "openblas" not in os.path.basename(path):
            continue
        try:
            get = ctypes.CDLL(path).openblas_get_corename  # the copy already loaded
        except (OSError, AttributeError):
            continue
        get.restype = ctypes.c_char_p
        return get().decode()
    return None


def build(args, root):
    if args.sticky:
        lta = load_package(os.path.join(root, GPT2), "ref_gpt2")
        module = lta.LongTermAttention(
            head_size=args.d_model // args.heads, length=args.chunk, target_len=args.chunk,
            attn_func="softmax", attn_num_basis=args.basis, continuous=True, attn_drop=0.0,
            infinite_memory=True, n_layers=1, n_heads=args.heads, affines=True, mask=False,
            mask_type="cnn", mask_dropout=0.0, kl_regularizer=True, sigma_0=0.05, mu_0=1.0,
            sticky_memories=True)
        module.mem_threshold = 1 << 62  # no periodic reset: every chunk updates the memory
    else:
        lta = load_package(os.path.join(root, SORTING), "ref_sorting")
        module = lta.LongTermAttention(
            head_size=args.d_model // args.heads, length=args.chunk, target_len=args.chunk,
            attn_func="softmax", attn_num_basis=args.basis, attn_drop=0.0, infinite_memory=True,
            n_layers=1, n_heads=args.heads, d_model=args.d_model, mask=False, mask_type="cnn",
            kl_regularizer=True, sigma_0=0.05, mu_0=None)
    module.train(args.backward == 1)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-dir", default=os.environ.get("REFERENCE_DIR"))
    parser.add_argument("--sticky", type=int, choices=(0, 1), default=0)
    parser.add_argument("--d-model", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--chunk", type=int, default=None)
    parser.add_argument("--basis", type=int, default=512)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--tau", type=float, default=None)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--backward", type=int, choices=(0, 1), default=0)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--kl-weight", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.reference_dir:
        parser.error("name the authors' checkout: REFERENCE_DIR=... or --reference-dir")
    # The shapes of the paper's two configurations unless given; the module hard-codes M and τ.
    lm = args.sticky == 1
    args.d_model = args.d_model or (768 if lm else 300)
    args.heads = args.heads or (12 if lm else 6)
    args.chunk = args.chunk or (512 if lm else 1024)
    tau = 0.5 if lm else 0.75
    if args.samples != 512 or (args.tau is not None and abs(args.tau - tau) > 1e-12):
        parser.error(f"the reference hard-codes --samples 512 and --tau {tau} here")
    if args.chunks < 3:
        parser.error("--chunks must be >= 3")

    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(7)
    stub_missing("entmax", ["Sparsemax", "Entmax15", "EntmaxBisect"])
    stub_missing("matplotlib.pyplot", [])
    module = build(args, args.reference_dir)
    e, s, L = args.d_model, args.streams, args.chunk
    d_head = e // args.heads
    times = []
    checksum = 0.0
    for _ in range(args.chunks):
        if lm:
            k = torch.randn(s, L, e)
            q = torch.randn(s, args.heads, L, d_head)
        else:
            k = torch.randn(L, s, e)
            q = torch.randn(L, s, e)
        dy = torch.randn(L, s, e) if not lm else torch.randn(s, L, e)
        if args.backward:
            k.requires_grad_(True)
            q.requires_grad_(True)
        t0 = time.perf_counter()
        if args.backward:
            y, kl = module(k, q)
            loss = (y * dy).sum() + args.kl_weight * kl.sum()
            module.zero_grad(set_to_none=False)
            loss.backward()
        else:
            with torch.no_grad():
                y, kl = module(k, q)
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1e3)
        checksum += float(y.detach().sum())
    steady = times[2:]
    blas = "unknown"
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            libs = {line.split()[-1] for line in maps if "blas" in line}
        blas = ",".join(sorted(libs)) or "none loaded"
        # scripts/bench records it: a CPU newer than the OpenBLAS release gets its generic
        # kernel, which is no longer the reference at its best.
        core = openblas_core(libs)
        if core:
            blas += f", openblas core {core}"
    except OSError:
        pass
    print(f"# reference {'gpt2 sticky' if lm else 'sorting uniform'}, d_model {e}, heads "
          f"{args.heads}, chunk {L}, streams {s}, backward {args.backward}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s), blas {blas}, "
          f"checksum {checksum:.6g}", file=sys.stderr)
    print(f"ms_per_chunk={statistics.median(steady):.3f}")


if __name__ == "__main__":
    main()
