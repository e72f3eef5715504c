"""Lab 3's pre-training with glibc's default malloc vs :func:`labsupport.training.keep_freed_memory`.

By default glibc maps every block over 32 MiB fresh from the OS and unmaps it when freed, so each
new tensor that size is page-faulted in on first touch; ``keep_freed_memory`` serves such blocks
from malloc's heap and keeps them there. The setting is process-wide and cannot be undone, so each
run is a child process (``LABSUPPORT_MALLOC=system`` or ``keep``) that pre-trains the full
profile's GPT for ``--steps`` steps with :func:`labsupport.llm.train.pretrain` (no cache) and
reports its time, its minor page faults, its peak memory and a digest of the weights (the two
must be bit for bit the same). Alternating rounds (the machine's speed drifts); the last line is
``speedup: N.Nx`` (the fastest round of each).

    python benchmarks/malloc_speed.py [--steps 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def child(steps: int) -> None:
    import torch

    from labsupport.io import tensors_sha256
    from labsupport.llm import experiments as E
    from labsupport.llm.corpus import load_vader
    from labsupport.llm.tokenizer import train_tokenizer
    from labsupport.llm.train import PretrainConfig, pretrain
    from labsupport.training import configure_threads, keep_freed_memory

    configure_threads()
    texts = load_vader().text
    tok = train_tokenizer(texts)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    model = pretrain(tok, texts, E.lab3_profile("full").model, PretrainConfig(steps=steps), device="cpu",
                     cache=False, progress=False)
    print(json.dumps({"seconds": time.perf_counter() - start, "kept": keep_freed_memory(),
                      "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "digest": tensors_sha256(model.state_dict()), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.steps)
    runs: dict[str, list[dict]] = {"system": [], "keep": []}
    for _ in range(args.rounds):
        for mode in runs:
            out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps)],
                                 env={**os.environ, "LABSUPPORT_MALLOC": mode}, capture_output=True, text=True,
                                 check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    first = runs["system"][0]
    print(f"machine: {platform.machine()}, {first['threads']} threads, torch {first['torch']}, "
          f"glibc {platform.libc_ver()[1] or '-'}; {args.steps} pre-training steps, {args.rounds} rounds")
    for mode, rs in runs.items():
        best = min(rs, key=lambda r: r["seconds"])
        print(f"{mode:6s}  {best['seconds']:6.1f} s ({1000 * best['seconds'] / args.steps:.0f} ms/step), "
              f"{best['faults']:,} minor page faults, "
              f"peak memory {best['peak_mib']:.0f} MiB, setting in force: {best['kept']}")
    digests = {r["digest"] for rs in runs.values() for r in rs}
    print("weights: bit for bit the same" if len(digests) == 1 else f"weights DIFFER: {sorted(digests)}")
    fastest = {mode: min(r["seconds"] for r in rs) for mode, rs in runs.items()}
    print(f"speedup: {fastest['system'] / fastest['keep']:.1f}x")


if __name__ == "__main__":
    main()
