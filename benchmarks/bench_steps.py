"""Milliseconds per training step on the CPU recipe: AdamW against Muon, CLM against span
corruption, the update-ratio tracker of chapter 3 and the span batch's construction.

The recipe is bench_train.py's (4 layers, 4 heads, width 128, context 64, batch 12, lr 1e-3,
no dropout). Each configuration trains a fresh model for ``--warmup`` steps, which are not timed,
then ``--steps`` more; the figure is the median of the per-step times (the gaps between
consecutive history rows, no evaluation in between), which a shared machine's load spikes move
less than a mean. ``--rounds`` repeats the whole set, interleaved, so that a change in the
machine's load hits every configuration alike.

    python benchmarks/bench_steps.py                      # 3 rounds of 60 timed steps each
    python benchmarks/bench_steps.py --configs "adamw clm" "muon clm"
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_steps.py --label before

Run it from two checkouts in one command (as RESULTS.md records) to compare code before and after
a change on the same machine at the same moment. It uses only lmlab's public API.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import lmlab
from lmlab.data import char_corpus
from lmlab.diagnostics import UpdateRatioTracker, named_weights
from lmlab.objectives import span_corruption_batch

CONFIGS = {  # name: TrainConfig fields that differ from the recipe
    "adamw clm": {"optimizer": "adamw"},
    "muon clm": {"optimizer": "muon", "momentum": 0.95},
    "adamw span": {"optimizer": "adamw", "objective": "span"},
}


def recipe_model(corpus) -> lmlab.Transformer:
    torch.manual_seed(0)
    return lmlab.Transformer(lmlab.ModelConfig(
        vocab_size=corpus.tokenizer.vocab_size, block_size=64, n_layer=4, n_head=4, d_model=128,
        dropout=0.0, bias=False))


def step_ms(corpus, fields: dict, warmup: int, steps: int, callback=None,
            batch_size: int = 12) -> float:
    """Median ms per optimizer step over the ``steps`` steps after ``warmup``."""
    model = recipe_model(corpus)
    total = warmup + steps
    config = lmlab.TrainConfig(steps=total + 1, batch_size=batch_size, lr=1e-3,
                               warmup_steps=warmup,
                               eval_every=total + 1, eval_batches=1, device="cpu", progress=False,
                               **fields)
    run = lmlab.train(model, corpus, config, callback=callback)
    seconds = [r["seconds"] for r in run.history[: total]]  # the last row holds an evaluation
    gaps = [b - a for a, b in zip(seconds[warmup - 1 : -1], seconds[warmup:], strict=True)]
    return 1000 * statistics.median(gaps)


def tracker_ms(corpus, calls: int) -> float:
    """ms per step of an UpdateRatioTracker on the recipe model's matrices: the median call,
    plus the final reading of its rows spread over the steps (a tracker may defer it)."""
    model = recipe_model(corpus)
    tracker = UpdateRatioTracker(named_weights(model))
    times = []
    for step in range(1, calls + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.001)
        start = time.perf_counter()
        tracker({"step": step})
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    assert len(tracker.rows) == calls
    return 1000 * (statistics.median(times) + (time.perf_counter() - start) / calls)


def span_build_ms(corpus, calls: int) -> float:
    """Median ms of building one batch of span-corruption inputs (12 windows of 64)."""
    gen = torch.Generator().manual_seed(0)
    x = corpus.train[: 12 * 64].view(12, 64)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        span_corruption_batch(x, corpus.tokenizer, 0.15, 3.0, gen)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--label", default="")
    parser.add_argument("--batch-size", type=int, default=12,
                        help="windows per step (the recipe: 12); Newton-Schulz's cost does not "
                             "grow with it, so Muon / AdamW falls as it grows")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    corpus = char_corpus("tinyshakespeare")
    results: dict[str, list[float]] = {name: [] for name in [*args.configs, "tracker",
                                                              "span batch"]}
    for _ in range(args.rounds):
        for name in args.configs:
            results[name].append(step_ms(corpus, CONFIGS[name], args.warmup, args.steps,
                                         batch_size=args.batch_size))
        results["tracker"].append(tracker_ms(corpus, args.steps))
        results["span batch"].append(span_build_ms(corpus, args.steps))
    env = {"label": args.label, "lmlab": os.path.dirname(lmlab.__file__),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "batch_size": args.batch_size,
           "cpus": os.cpu_count(),
           "machine": platform.machine(), "load": os.getloadavg()[0]}
    print(json.dumps(env))
    for name, values in results.items():
        print(f"{args.label:>8} {name:>10}: median {statistics.median(values):7.2f} ms "
              f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")
    ms = {name: statistics.median(values) for name, values in results.items()}
    for name in ("muon clm", "adamw span"):
        if name in ms and "adamw clm" in ms:
            print(f"{args.label:>8} {name} / adamw clm = {ms[name] / ms['adamw clm']:.2f}")


if __name__ == "__main__":
    main()
