"""Lab 3 instruction-tuning step: the last block at the answer positions only vs everywhere.

Both variants train a copy of the same pre-trained GPT (the full profile's: 2 layers, d = 128) on
the same length-bucketed batches of the Lab 3 instruction corpus with the answer-only loss, in the
same process, in alternating rounds (the machine's speed drifts). "everywhere" runs the last block
at every position and then picks the answer positions (what the model did before); "answer
positions" computes only the last block's keys and values everywhere. The values are the same; the
script checks the first batch's loss agrees. The last line is ``speedup: N.Nx``.

    python benchmarks/llm_step_speed.py [--steps 150] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import numpy as np
import torch
from torch.nn import functional as F

from labsupport.llm import experiments as E
from labsupport.llm import train
from labsupport.training import configure_threads, flush_denormals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    configure_threads()
    lab = E.setup("full", progress=False)
    prompts, seqs = train.encode_sequences(lab.tok, lab.train, lab.base.cfg.block_size)
    batches = train._buckets(np.array([len(s) for s in seqs]), 32, np.random.default_rng(0))[: args.steps]
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{len(batches)} steps of 32 rows, mean {np.mean([len(s) for s in seqs]):.1f} tokens")

    def run(only_answers: bool) -> tuple[float, float]:
        model = copy.deepcopy(lab.base)
        tuned = train.InstructionModel(model, lab.tok, 0, None)
        opt = train._adamw(model, 0.01, 1e-3)
        first = None
        start = time.perf_counter()
        with flush_denormals(torch.device("cpu")):
            for rows in batches:
                batch = [seqs[i] for i in rows]
                r, c, targets = train._answer_targets(batch, [len(prompts[i]) for i in rows])
                if only_answers:
                    h = tuned.hidden([s[:-1] for s in batch], (r, c))
                else:  # the full last block, then the answer positions
                    h = model.hidden(train.pad([s[:-1] for s in batch], 0))[r, c]
                loss = F.cross_entropy(model.head(h), targets)
                first = float(loss.detach()) if first is None else first
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return time.perf_counter() - start, first

    times = {"everywhere": [], "answer positions": []}
    losses = {}
    for _ in range(args.rounds):
        for name in times:
            seconds, losses[name] = run(name == "answer positions")
            times[name].append(seconds)
    assert abs(losses["everywhere"] - losses["answer positions"]) < 1e-4, losses
    for name, t in times.items():
        print(f"{name:17s} {1000 * min(t) / len(batches):6.1f} ms/step (best of {args.rounds}; all: "
              f"{', '.join(f'{s:.1f}' for s in t)} s)")
    print(f"speedup: {min(times['everywhere']) / min(times['answer positions']):.1f}x")


if __name__ == "__main__":
    main()
