"""Time to quality on the CPU: how soon each recipe reaches a validation loss of 1.89.

Every recipe trains with :func:`lmlab.train` in this one process, one after the other, and is
scored every ``--eval-points`` fraction of its run on the same fixed validation batches: 200
batches of 12 windows of 64 characters from the validation text (seed 1234), so runs 0.02 apart
rank reliably (fewer batches are too noisy). The time to quality of a recipe is the training time
up to the first scoring at or below ``--target``; its end is the training time of the whole run.

Times exclude the scoring (it is measured and printed apart) and include everything else:
building the model and the optimizer, drawing the batches, the loop's own bookkeeping, and a
``torch.compile`` when the recipe asks for it. Two clocks are read: wall time, and the process's
CPU time. On a machine that other work shares, the CPU time of a one-thread process is what the
recipe costs, whatever the load; the wall time is what a learner waits on an idle machine. Run it
single-threaded so that the comparison is fair under load (``OMP_NUM_THREADS=1``; the script also
calls ``torch.set_num_threads(--threads)``).

    OMP_NUM_THREADS=1 python benchmarks/time_to_quality.py                 # published + workbook
    OMP_NUM_THREADS=1 python benchmarks/time_to_quality.py --recipes published muon_b32_wsd
    python benchmarks/time_to_quality.py --list                           # every recipe, in full
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lmlab  # noqa: E402
from lmlab.data import BatchSampler, char_corpus  # noqa: E402
from lmlab.evaluation import evaluate  # noqa: E402

TARGET = 1.89
VAL_WINDOWS = (200, 12, 64)  # batches x windows x characters: the fixed validation set

PUBLISHED = {
    # nanoGPT's CPU recipe for Tiny Shakespeare (its README, "I only have a macbook")
    "model": dict(n_layer=4, n_head=4, d_model=128, block_size=64, dropout=0.0, bias=False),
    "train": dict(steps=2000, batch_size=12, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                  schedule="cosine", weight_decay=0.1, betas=(0.9, 0.99), grad_clip=1.0),
}


def variant(base: dict, model: dict | None = None, **train) -> dict:
    return {"model": {**base["model"], **(model or {})}, "train": {**base["train"], **train}}


RECIPES: dict[str, dict] = {
    "published": PUBLISHED,
    # more tokens per step (cheaper per token on a CPU), a higher peak lr, a shorter run
    "b32_lr3e-3": variant(PUBLISHED, batch_size=32, lr=3e-3, min_lr=3e-4, steps=450,
                          warmup_steps=30),
    "b32_lr6e-3": variant(PUBLISHED, batch_size=32, lr=6e-3, min_lr=6e-4, steps=450,
                          warmup_steps=30),
    # ... and Muon for the hidden matrices (lmlab's Muon matches AdamW's update size: one lr)
    "muon_b32_lr3e-3": variant(PUBLISHED, optimizer="muon", momentum=0.95, batch_size=32,
                               lr=3e-3, min_lr=3e-4, steps=450, warmup_steps=30),
    "muon_b32_lr6e-3": variant(PUBLISHED, optimizer="muon", momentum=0.95, batch_size=32,
                               lr=6e-3, min_lr=6e-4, steps=450, warmup_steps=30),
    # ... a higher lr, a schedule that holds the peak then decays to zero (WSD), more tokens
    "muon_b32_lr6e-3_wsd": variant(PUBLISHED, optimizer="muon", momentum=0.95, batch_size=32,
                                   lr=6e-3, min_lr=0.0, steps=420, warmup_steps=30,
                                   schedule="wsd", decay_fraction=0.3),
    "muon_b48_lr8e-3_wsd": variant(PUBLISHED, optimizer="muon", momentum=0.95, batch_size=48,
                                   lr=8e-3, min_lr=0.0, steps=300, warmup_steps=20,
                                   schedule="wsd", decay_fraction=0.3),
    "muon_b32_lr6e-3_wsd_compile": variant(PUBLISHED, optimizer="muon", momentum=0.95,
                                           batch_size=32, lr=6e-3, min_lr=0.0, steps=420,
                                           warmup_steps=30, schedule="wsd", decay_fraction=0.3,
                                           compile=True),
    "compile": variant(PUBLISHED, compile=True),
}
WORKBOOK = "muon_b32_lr6e-3_wsd"
"""The recipe of the quickstart's ``cpu`` profile (notebooks/00_quickstart.ipynb)."""


def fixed_batches(corpus, n: int = VAL_WINDOWS[0]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    _, b, t = VAL_WINDOWS
    sampler = BatchSampler(corpus.val, t, b, "cpu", torch.Generator().manual_seed(1234))
    return [sampler.sample() for _ in range(n)]


def score(model, batches, chunk: int = 20) -> float:
    """Mean loss over ``batches``, ``chunk`` batches per forward pass (equal-sized batches, so the
    mean of the chunks' means is the mean over all batches)."""
    merged = [(torch.cat([x for x, _ in batches[i:i + chunk]]),
               torch.cat([y for _, y in batches[i:i + chunk]]))
              for i in range(0, len(batches), chunk)]
    return evaluate(model, merged)


def run_recipe(name: str, recipe: dict, corpus, batches, eval_points: int, seed: int,
               target: float = TARGET, eval_from: float = 0.0) -> dict:
    tc = lmlab.TrainConfig(**recipe["train"], eval_every=recipe["train"]["steps"],
                           eval_batches=1, seed=seed, device="cpu", progress=False)
    every = max(1, tc.steps // eval_points)
    evals: list[dict] = []
    spent = {"wall": 0.0, "cpu": 0.0}  # time inside the scoring, excluded from the clocks
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    model_box = {}

    def callback(row: dict) -> None:
        late = row["step"] >= eval_from * tc.steps
        if not ((late and row["step"] % every == 0) or row["step"] == tc.steps):
            return
        wall, cpu = time.perf_counter(), time.process_time()
        loss = score(model_box["model"], batches)
        evals.append({"step": row["step"], "val_loss": loss,
                      "wall": wall - start_wall - spent["wall"],
                      "cpu": cpu - start_cpu - spent["cpu"]})
        spent["wall"] += time.perf_counter() - wall
        spent["cpu"] += time.process_time() - cpu

    torch.manual_seed(seed)
    model_config = lmlab.ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **recipe["model"])
    model_box["model"] = model = lmlab.Transformer(model_config)
    load_before = os.getloadavg()[0]
    lmlab.train(model, corpus, tc, callback=callback)
    reached = next((e for e in evals if e["val_loss"] <= target), None)
    end = evals[-1]
    return {"name": name, "recipe": recipe, "steps": tc.steps,
            "tokens_per_step": tc.batch_size * model_config.block_size,
            "end_wall": end["wall"], "end_cpu": end["cpu"], "final_val_loss": end["val_loss"],
            "best_val_loss": min(e["val_loss"] for e in evals),
            "to_target_wall": reached["wall"] if reached else None,
            "to_target_cpu": reached["cpu"] if reached else None,
            "to_target_step": reached["step"] if reached else None,
            "scoring_wall": spent["wall"], "evals": evals,
            "load": (load_before, os.getloadavg()[0])}


def report(r: dict, target: float) -> None:
    """Print one recipe's result, and its scorings as step:loss@CPU seconds."""
    to = (f"val <= {target} at step {r['to_target_step']}: {r['to_target_cpu']:.1f} s CPU, "
          f"{r['to_target_wall']:.1f} s wall" if r["to_target_cpu"] is not None
          else f"val never <= {target}")
    print(f"{r['name']}: {r['steps']} steps x {r['tokens_per_step']} tokens in "
          f"{r['end_cpu']:.1f} s CPU ({r['end_wall']:.1f} s wall; scoring "
          f"{r['scoring_wall']:.0f} s wall apart); final val {r['final_val_loss']:.3f}, best "
          f"{r['best_val_loss']:.3f}; {to}; load {r['load'][0]:.1f} -> {r['load'][1]:.1f}\n    "
          + " ".join(f"{e['step']}:{e['val_loss']:.3f}@{e['cpu']:.0f}s" for e in r["evals"]),
          flush=True)


def _run_in_process(name, recipe, eval_points, seed, target, eval_from, threads, val_batches,
                    corpus=None, batches=None) -> dict:
    torch.set_num_threads(threads)
    corpus = corpus if corpus is not None else char_corpus("tinyshakespeare")
    batches = batches if batches is not None else fixed_batches(corpus, val_batches)
    result = run_recipe(name, recipe, corpus, batches, eval_points, seed, target, eval_from)
    report(result, target)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["published", WORKBOOK],
                        help=f"recipes to run, in order (default: published {WORKBOOK})")
    parser.add_argument("--target", type=float, default=TARGET)
    parser.add_argument("--eval-points", type=int, default=20,
                        help="scorings per run, evenly spaced (default 20)")
    parser.add_argument("--eval-from", type=float, default=0.0,
                        help="score only from this fraction of each run on (default 0)")
    parser.add_argument("--val-batches", type=int, default=VAL_WINDOWS[0],
                        help=f"fixed validation batches (default {VAL_WINDOWS[0]}; fewer rank "
                             "runs 0.02 apart unreliably: for exploring only)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", action="store_true",
                        help="run the recipes at the same time, one process each (each is "
                             "timed by its own CPU clock; wall times then share the cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--list", action="store_true", help="print every recipe and exit")
    args = parser.parse_args()
    if args.list:
        print(json.dumps(RECIPES, indent=1))
        return
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: {list(RECIPES)}")
    torch.set_num_threads(args.threads)
    corpus = char_corpus("tinyshakespeare")
    batches = fixed_batches(corpus, args.val_batches)
    env = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "machine": platform.machine(), "python": platform.python_version(),
           "val_windows": (args.val_batches, *VAL_WINDOWS[1:]), "target": args.target}
    print(json.dumps(env), flush=True)
    jobs = [(name, RECIPES[name], args.eval_points, args.seed, args.target, args.eval_from,
             args.threads, args.val_batches) for name in args.recipes]
    if args.parallel:  # every recipe at once, one process each: all under the same load
        with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
            results = pool.starmap(_run_in_process, jobs)
    else:
        results = [_run_in_process(*job, corpus=corpus, batches=batches) for job in jobs]
    reference = next((r for r in results if r["name"] == "published"), None)
    if reference is not None:
        for r in results:
            if r is not reference and r["to_target_cpu"] is not None:
                cpu = r["to_target_cpu"] / reference["end_cpu"]
                wall = r["to_target_wall"] / reference["end_wall"]
                print(f"{r['name']}: reaches {args.target} in {cpu:.2f} of the published "
                      f"recipe's CPU time ({wall:.2f} of its wall time)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "results": results}, indent=1))


if __name__ == "__main__":
    main()
