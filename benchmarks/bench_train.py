"""Time-to-quality on this machine: lmlab.train against a minimal GPT loop, side by side.

The recipe is the published CPU recipe for Tiny Shakespeare: 4 layers, 4 heads, width 128,
context 64, batch 12, AdamW lr 1e-3 with 100 warmup steps and cosine decay to 1e-4, 2000 steps,
no dropout. Both sides train the same architecture in the same process on the same data, and both
are scored on the same 100 fixed validation batches. Figures go to stdout and, with --json, to a
file; benchmarks/RESULTS.md records them.

    python benchmarks/bench_train.py            # both, 2000 steps each (about 4 minutes on 2 cores)
    python benchmarks/bench_train.py --steps 200 --only lmlab
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from minimal_gpt import train_minimal  # noqa: E402

import lmlab  # noqa: E402
from lmlab.data import BatchSampler, char_corpus  # noqa: E402

TARGET = 1.89


@torch.no_grad()
def score(loss_fn, val: torch.Tensor, n_batches: int = 100) -> float:
    sampler = BatchSampler(val, 64, 12, generator=torch.Generator().manual_seed(1234))
    total = 0.0
    for _ in range(n_batches):
        x, y = sampler.sample()
        total += float(loss_fn(x, y))
    return total / n_batches


def bench_lmlab(corpus, steps: int, seed: int) -> dict:
    torch.manual_seed(seed)
    mc = lmlab.ModelConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=64, n_layer=4,
                           n_head=4, d_model=128, dropout=0.0, bias=False)
    model = lmlab.Transformer(mc)
    tc = lmlab.TrainConfig(steps=steps, batch_size=12, lr=1e-3, min_lr=1e-4,
                           warmup_steps=min(100, steps),
                           schedule="cosine", weight_decay=0.1, betas=(0.9, 0.99), grad_clip=1.0,
                           eval_every=max(1, steps // 10), eval_batches=20, seed=seed,
                           device="cpu", progress=False)
    start = time.perf_counter()
    run = lmlab.train(model, corpus, tc)
    seconds = time.perf_counter() - start
    # lmlab evaluates as it trains: that time is inside `seconds` (the baseline does not)
    model.eval()
    val = score(lambda x, y: lmlab.objectives.clm_loss(model(x), y), corpus.val)
    reached = next((r for r in run.evals if r["val_loss"] <= TARGET), None)
    return {"name": "lmlab.train", "seconds": seconds, "val_loss": val,
            "ms_per_step": 1000 * seconds / steps,
            "seconds_to_target": reached["seconds"] if reached else None}


def bench_minimal(corpus, steps: int, seed: int) -> dict:
    model, seconds = train_minimal(corpus.train, corpus.tokenizer.vocab_size, steps=steps,
                                   seed=seed)
    model.eval()
    val = score(lambda x, y: model(x, y), corpus.val)
    return {"name": "minimal GPT loop", "seconds": seconds, "val_loss": val,
            "ms_per_step": 1000 * seconds / steps, "seconds_to_target": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["lmlab", "minimal"], default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    corpus = char_corpus("tinyshakespeare")
    results = []
    if args.only in (None, "minimal"):
        results.append(bench_minimal(corpus, args.steps, args.seed))
    if args.only in (None, "lmlab"):
        results.append(bench_lmlab(corpus, args.steps, args.seed))
    env = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "machine": platform.machine(), "python": platform.python_version()}
    print(json.dumps(env))
    for r in results:
        target = r["seconds_to_target"]
        print(f"{r['name']:>18}: {r['seconds']:7.1f} s for {args.steps} steps "
              f"({r['ms_per_step']:.1f} ms/step), val loss {r['val_loss']:.3f}"
              + (f", val <= {TARGET} after {target:.1f} s" if target else ""))
        assert math.isfinite(r["val_loss"])
    if args.json:
        args.json.write_text(json.dumps({"env": env, "steps": args.steps, "results": results},
                                        indent=2))


if __name__ == "__main__":
    main()
