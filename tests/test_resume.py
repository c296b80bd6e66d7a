"""Interrupt and resume: Ctrl-C at any moment, the early-stopping state, per-run folders, config
checks on resume, and RNG states that stay on the CPU whatever the map location."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from lmlab import ModelConfig, TrainConfig, Transformer, train
from lmlab.checkpoint import load_checkpoint
from lmlab.data import CharTokenizer, Corpus
from lmlab.train import TrainingInterrupted, _set_rng_state

WORKER = os.path.join(os.path.dirname(__file__), "sigint_worker.py")


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    """Random training text over 8 letters and an unrelated validation text: the validation loss
    falls, then climbs, so early stopping fires within a few dozen steps."""
    g = torch.Generator().manual_seed(0)
    return Corpus("random8", CharTokenizer("abcdefgh"), torch.randint(0, 8, (400,), generator=g),
                  torch.randint(0, 8, (400,), generator=g))


MODEL = ModelConfig(vocab_size=12, block_size=16, n_layer=1, n_head=2, d_model=32, dropout=0.1)


def fresh(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(MODEL)


def config(folder=None, **changes) -> TrainConfig:
    base = TrainConfig(steps=40, batch_size=8, lr=2e-2, warmup_steps=2, schedule="constant",
                       weight_decay=0.0, eval_every=3, eval_batches=2, progress=False,
                       device="cpu", patience=4,
                       checkpoint_dir=str(folder) if folder is not None else None)
    return base.replace(**changes)


def strip_time(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def assert_same_run(a, b):
    assert strip_time(a.history) == strip_time(b.history)
    assert a.stopped_early == b.stopped_early
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with."""
    run = train(fresh(), corpus, config(tmp_path_factory.mktemp("reference")))
    assert run.stopped_early and len(run.history) < 40  # so the patience state matters below
    return run


def _send_sigint() -> None:
    assert threading.current_thread() is threading.main_thread()  # the handler lives there
    os.kill(os.getpid(), signal.SIGINT)


def test_sigint_at_random_moments_resumes_exactly(tmp_path):
    """Real signals at random instants (12 trials, delays from a fixed seed) into a subprocess
    that trains, stops, resumes: parameters, history and the early stop equal the uninterrupted
    run bit for bit on the CPU. Before the fix 5 of 15 such trials differed."""
    rng = random.Random(2024)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(WORKER)),
                                           os.environ.get("PYTHONPATH", "")]))
    with open(tmp_path / "worker.err", "w") as err:
        proc = subprocess.Popen([sys.executable, WORKER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        watchdog = threading.Timer(150, proc.kill)
        watchdog.start()
        try:
            ready = json.loads(proc.stdout.readline())
            results = []
            for _ in range(12):
                proc.stdin.write("go\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == "started"
                time.sleep(rng.uniform(0.02, 0.95) * ready["seconds"])
                proc.send_signal(signal.SIGINT)
                partial = json.loads(proc.stdout.readline())
                proc.stdin.write("signalled\n")
                proc.stdin.flush()
                results.append({**partial, **json.loads(proc.stdout.readline())})
            proc.stdin.close()
            proc.wait(timeout=30)
        finally:
            watchdog.cancel()
            proc.kill()
    log = (tmp_path / "worker.err").read_text()[-2000:]
    differing = [r for r in results if not r["same"]]
    assert not differing, f"{len(differing)} of {len(results)} trials differ: {differing}\n{log}"
    interrupted = [r for r in results if r["interrupted"]]
    # the delays cover the run, so most trials stop it mid-way (else the test proves little)
    assert len(interrupted) >= 6, (results, log)
    assert len({r["interrupted_at"] for r in interrupted}) >= 3, results  # different moments


def test_sigint_during_evaluation_keeps_the_evaluation(corpus, reference, tmp_path):
    """Ctrl-C while step 9 is being evaluated: the step finishes, val_loss included, then stops.
    (Before the fix the step was kept without its val_loss, for good.)"""
    model = fresh()
    sent = []

    def in_eval(module, args):
        if not module.training and not sent and len(part_rows) == 8:
            sent.append(True)
            _send_sigint()

    part_rows: list = []
    handle = model.register_forward_pre_hook(in_eval)
    try:
        part = train(model, corpus, config(tmp_path), callback=part_rows.append)
    finally:
        handle.remove()
    assert sent and part.interrupted
    assert part.history[-1]["step"] == 9 and "val_loss" in part.history[-1]
    resumed = train(fresh(1), corpus, config(tmp_path), resume=part.checkpoint_path)
    assert_same_run(resumed, reference)


def test_sigint_inside_the_optimizer_step_finishes_that_step(corpus, reference, tmp_path):
    """Ctrl-C inside optimizer.step() of step 5: before the fix the checkpoint said step 4 but
    held step 5's weights."""
    calls = []

    def after_step(optimizer, args, kwargs):
        calls.append(1)
        if len(calls) == 5:
            _send_sigint()

    handle = register_optimizer_step_post_hook(after_step)
    try:
        part = train(fresh(), corpus, config(tmp_path))
    finally:
        handle.remove()
    assert part.interrupted and len(part.history) == 5
    assert load_checkpoint(part.checkpoint_path)["step"] == 5
    resumed = train(fresh(1), corpus, config(tmp_path), resume=part.checkpoint_path)
    assert_same_run(resumed, reference)


def test_early_stopping_count_survives_an_interrupt(corpus, reference, tmp_path):
    """Stopped one evaluation before patience runs out: the resumed run stops where the
    uninterrupted one does. (Before the fix bad_evals restarted from 0 and it ran longer.)"""
    stop_step = reference.history[-1]["step"]
    evals_before = [r["step"] for r in reference.evals if r["step"] < stop_step]

    def stop(row):
        if row["step"] == evals_before[-1]:
            raise KeyboardInterrupt

    part = train(fresh(), corpus, config(tmp_path), callback=stop)
    assert part.interrupted
    assert load_checkpoint(part.checkpoint_path)["loop"]["bad_evals"] == 3  # patience 4, not yet
    resumed = train(fresh(1), corpus, config(tmp_path), resume=part.checkpoint_path)
    assert_same_run(resumed, reference)


def test_second_ctrl_c_stops_at_once_and_says_the_step_is_lost(corpus, tmp_path):
    before = signal.getsignal(signal.SIGINT)

    def twice(row):
        if row["step"] == 3:
            _send_sigint()
            _send_sigint()  # within the 2 s window: forced

    with pytest.raises(TrainingInterrupted, match="not saved") as err:
        train(fresh(), corpus, config(tmp_path), callback=twice)
    assert isinstance(err.value, KeyboardInterrupt)
    assert [r["step"] for r in err.value.history] == [1, 2, 3]
    assert load_checkpoint(err.value.run.checkpoint_path)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # train() restored the previous handler


def test_interrupted_runs_without_a_folder_get_one_each(corpus, tmp_path, monkeypatch):
    """Two runs stopped at step 3 with no checkpoint_dir: before the fix both wrote
    <cache>/interrupted/step_3.pt and resuming the first loaded the second's weights."""
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))

    def stop(row):
        if row["step"] == 3:
            raise KeyboardInterrupt

    first = train(fresh(), corpus, config(), callback=stop)
    second = train(fresh(), corpus, config(lr=1e-3), callback=stop)
    assert first.checkpoint_path != second.checkpoint_path
    assert first.checkpoint_path.parent != second.checkpoint_path.parent
    assert first.checkpoint_path.is_relative_to(tmp_path / "interrupted")
    saved = load_checkpoint(first.checkpoint_path)["model"]
    for name, p in first.model.state_dict().items():
        assert torch.equal(saved[name], p)


def test_resume_refuses_a_changed_meaning_and_lists_every_field(corpus, tmp_path):
    part = train(fresh(), corpus, config(tmp_path, steps=6))
    path = part.checkpoint_path
    changed = config(tmp_path, steps=8, lr=1e-3, batch_size=4, seed=5, objective="prefix",
                     optimizer="sgd")
    with pytest.raises(ValueError) as err:
        train(fresh(), corpus, changed, resume=path)
    message = str(err.value)
    for line in ("TrainConfig.lr: 0.02 -> 0.001", "TrainConfig.batch_size: 8 -> 4",
                 "TrainConfig.seed: 0 -> 5", "TrainConfig.objective: 'clm' -> 'prefix'",
                 "TrainConfig.optimizer: 'adamw' -> 'sgd'"):
        assert line in message
    assert str(path) in message
    with pytest.raises(ValueError, match=r"ModelConfig.dropout: 0.1 -> 0.0"):
        torch.manual_seed(0)
        train(Transformer(MODEL.replace(dropout=0.0)), corpus, config(tmp_path, steps=8),
              resume=path)
    with pytest.raises(ValueError, match=r"TrainConfig.steps: 6 -> 4 \(below the checkpoint"):
        train(fresh(), corpus, config(tmp_path, steps=4), resume=path)
    # what only changes when to evaluate or save, what to show and where: accepted
    allowed = config(tmp_path / "more", steps=9, eval_every=2, checkpoint_every=3, progress=True,
                     device="cpu")
    more = train(fresh(), corpus, allowed.replace(progress=False), resume=path)
    assert [r["step"] for r in more.history] == list(range(1, 10))


def test_rng_states_stay_on_the_cpu_whatever_the_map_location(corpus, tmp_path):
    """torch.set_rng_state and Generator.set_state take CPU byte tensors only: before the fix a
    resume on CUDA/MPS moved them to the device and crashed. 'meta' stands in for a GPU here."""
    part = train(fresh(), corpus, config(tmp_path, steps=3))
    state = load_checkpoint(part.checkpoint_path, map_location="meta")
    assert all(t.is_meta for t in state["model"].values())  # the map location was applied ...
    rng = state["rng"]
    # ... but not to the RNG states
    assert all(t.device.type == "cpu" and t.dtype == torch.uint8 for t in rng.values())
    gens = [torch.Generator(), torch.Generator()]
    _set_rng_state(rng, *gens, device=torch.device("cpu"))  # the restore path accepts them
    assert torch.equal(gens[0].get_state(), rng["gen0"])


def test_readme_promises_name_tests_that_exist(repo_root):
    """README's "What survives what" table names a test for each promise: each one exists."""
    readme = (repo_root / "README.md").read_text()
    section = readme.split("## What survives what", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`(test_\w+?)(?:\.py)?`", section))
    assert len(names) >= 12
    sources = "".join(p.read_text() for p in (repo_root / "tests").glob("test_*.py"))
    files = {p.stem for p in (repo_root / "tests").glob("test_*.py")}
    missing = [n for n in names if n not in files and f"def {n}(" not in sources]
    assert not missing, missing
