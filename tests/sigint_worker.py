"""Trains a tiny model again and again while tests/test_resume.py sends it SIGINT at random
moments, and says whether each interrupted-then-resumed run equals the uninterrupted one.

One process serves every trial, so the suite pays for one interpreter start. Protocol, one line
each way: the worker prints {"seconds": D} (the reference run's duration) once; then per trial the
test writes "go", the worker prints "started" and trains; the test sends SIGINT after a random
delay, the worker prints {"interrupted": ...}, the test writes "signalled" (its signal is handled
by then), and the worker resumes and prints {"same": ..., ...}. A SIGINT that arrives after
training has ended is only counted, never raised.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time

import torch

from lmlab import ModelConfig, TrainConfig, Transformer, train
from lmlab.data import CharTokenizer, Corpus

torch.set_num_threads(1)
PROTOCOL = sys.stdout  # the test reads only these lines; everything train() prints goes to stderr
sys.stdout = sys.stderr
LATE: list[float] = []
TRAINING = [False]


def _late(signum, frame) -> None:
    """The worker's own handler, in place whenever train() has not installed one: inside a
    train() call it acts as Python's default (KeyboardInterrupt); after training it only counts."""
    if TRAINING[0]:
        raise KeyboardInterrupt
    LATE.append(time.monotonic())


signal.signal(signal.SIGINT, _late)

TOKENIZER = CharTokenizer("abcdefgh")
_g = torch.Generator().manual_seed(0)
# random training text and an unrelated validation text: the validation loss soon climbs, so
# early stopping (patience) fires mid-run and its state must survive the interrupt
CORPUS = Corpus("random8", TOKENIZER, torch.randint(0, 8, (400,), generator=_g),
                torch.randint(0, 8, (400,), generator=_g))
MODEL = ModelConfig(vocab_size=12, block_size=16, n_layer=1, n_head=2, d_model=32, dropout=0.1)


def config(folder: str) -> TrainConfig:
    return TrainConfig(steps=40, batch_size=8, lr=2e-2, warmup_steps=2, schedule="constant",
                       weight_decay=0.0, eval_every=3, eval_batches=2, progress=False,
                       device="cpu", patience=4, checkpoint_dir=folder)


def fresh(seed: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(MODEL)


def summary(run) -> tuple:
    history = [{k: v for k, v in r.items() if k != "seconds"} for r in run.history]
    return history, [p.detach().clone() for p in run.model.parameters()], run.stopped_early


def emit(obj) -> None:
    print(json.dumps(obj) if not isinstance(obj, str) else obj, file=PROTOCOL, flush=True)


def main() -> None:
    train(fresh(0), CORPUS, config(tempfile.mkdtemp()).replace(steps=3, eval_every=1))  # warm up
    start = time.perf_counter()
    reference = summary(train(fresh(0), CORPUS, config(tempfile.mkdtemp())))
    emit({"seconds": time.perf_counter() - start, "steps": len(reference[0]),
          "stopped_early": reference[2]})
    for line in sys.stdin:
        if line.strip() != "go":
            break
        folder = tempfile.mkdtemp()
        emit("started")
        try:
            TRAINING[0] = True
            part = train(fresh(0), CORPUS, config(folder))
        except KeyboardInterrupt as err:  # the signal escaped train(): the run is lost
            emit({"interrupted": True, "escaped": repr(err)})
            sys.stdin.readline()
            emit({"same": False, "why": f"KeyboardInterrupt escaped train(): {err!r}"})
            continue
        finally:
            TRAINING[0] = False
        handler_restored = signal.getsignal(signal.SIGINT) is _late
        emit({"interrupted": part.interrupted, "steps": len(part.history),
              "seconds": part.history[-1]["seconds"]})
        sys.stdin.readline()  # "signalled": a late signal is delivered to _late by now
        time.sleep(0.02)
        if part.interrupted:
            resumed = train(fresh(1), CORPUS, config(folder), resume=part.checkpoint_path)
        else:
            resumed = part
        history, params, stopped = summary(resumed)
        why = []
        if history != reference[0]:
            pairs = zip(history, reference[0], strict=False)
            diff = [i for i, (a, b) in enumerate(pairs) if a != b]
            why.append(f"history differs ({len(history)} vs {len(reference[0])} rows, first "
                       f"differing row {diff[:1]})")
        if not all(torch.equal(p, q) for p, q in zip(params, reference[1], strict=True)):
            why.append("parameters differ")
        if stopped != reference[2]:
            why.append(f"stopped_early {stopped} vs {reference[2]}")
        if not handler_restored:
            why.append("train() did not restore the previous SIGINT handler")
        emit({"same": not why, "why": "; ".join(why), "interrupted_at": len(part.history),
              "late": len(LATE)})


if __name__ == "__main__":
    main()
