"""Data-parallel training: the ranks' batches, gradient accumulation without needless
all-reduces, and two torchrun processes (CPU, gloo) against one process on the same windows."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from lmlab import ModelConfig, TrainConfig, Transformer, train
from lmlab.checkpoint import load_checkpoint, load_model
from lmlab.cli import main
from lmlab.data import BatchSampler, load_text, text_corpus
from lmlab.distributed import DistContext, sync_gradients

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def context(rank, world_size):
    return DistContext(rank, world_size, rank, CPU, "gloo")


@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(load_text()[:20_000], encoding="utf-8")
    return path


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_rows_are_the_one_process_batch(world_size):
    """Rank r keeps rows [r*b, (r+1)*b) of one shared draw, so the ranks' batches stacked in
    rank order are the batch of B windows one process draws from the same seed. Catches ranks
    that draw the same windows (a seed not shared, or the same rows on every rank) or that lose
    windows of the global batch."""
    data = torch.arange(1000)
    one = BatchSampler(data, 8, 8, CPU, torch.Generator().manual_seed(5))
    ranks = [context(r, world_size).sampler(data, 8, 8, torch.Generator().manual_seed(5))
             for r in range(world_size)]
    for _ in range(3):
        x, y = one.sample()  # (8, 8)
        parts = [sampler.sample() for sampler in ranks]  # world_size x ((b, 8), (b, 8))
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
    with pytest.raises(ValueError, match=r"batch_size=6 .* multiple of the 4 processes"):
        context(0, 4).rows(6)


def test_no_sync_on_all_but_the_last_micro_batch():
    """Entering DDP's no_sync for the forward of all but the last micro-batch (and only then)."""
    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.entered = []

        def no_sync(self):
            self.entered.append(True)
            return torch.enable_grad()  # any context manager

    model = Recorder()
    for micro in range(4):
        with sync_gradients(model, micro, 4):
            pass
    assert model.entered == [True, True, True]  # micro-batches 0, 1, 2; not 3
    with sync_gradients(torch.nn.Linear(1, 1), 0, 4):  # not DDP: a no-op
        pass


class CountingContext(DistContext):
    """A one-process group whose DDP counts the gradient all-reduces (one per bucket)."""

    calls: list

    def wrap(self, model):
        ddp = super().wrap(model)

        def counting_allreduce(state, bucket):
            self.calls.append(bucket.index())
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, counting_allreduce)
        return ddp


def test_train_all_reduces_once_per_step_and_matches_plain_training(tmp_path, small_text):
    """In a one-process gloo group, train(dist=...) with grad_accum=3 all-reduces the gradients
    once per optimizer step (per bucket), not once per micro-batch (catches no_sync missing, or
    the forward run outside it), and gives the same parameters as train() without dist (catches
    a hook that changes the computation: a wrong seed, wrong rows, the loss recorded twice)."""
    corpus = text_corpus(small_text.read_text(encoding="utf-8"), "small")
    model_config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=16, n_layer=1,
                               n_head=2, d_model=16)
    config = TrainConfig(steps=2, batch_size=4, grad_accum=3, warmup_steps=1, eval_every=2,
                         eval_batches=1, progress=False, device="cpu")
    store = torch_dist.FileStore(str(tmp_path / "store"), 1)
    torch_dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        ddp_model = Transformer(model_config)
        ctx = CountingContext(0, 1, 0, CPU, "gloo")
        object.__setattr__(ctx, "calls", [])
        ddp_run = train(ddp_model, corpus, config, dist=ctx)
    finally:
        torch_dist.destroy_process_group()
    torch.manual_seed(0)
    plain_run = train(Transformer(model_config), corpus, config)
    buckets = len(set(ctx.calls))
    assert len(ctx.calls) == config.steps * buckets  # not steps * grad_accum * buckets
    for (name, a), b in zip(ddp_model.state_dict().items(), plain_run.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name  # world size 1: the same operations, bit for bit
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in ddp_run.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in plain_run.history]


def torchrun_train(cwd, *args):
    """`torchrun --standalone --nproc_per_node 2 -m lmlab train ARGS` (gloo on CPU)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "lmlab", "train", *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow  # two torchrun launches: about 10 s of CPU time each
def test_torchrun_two_processes_equal_one_process(tmp_path, small_text):
    """`torchrun --nproc_per_node 2 -m lmlab train` (gloo, 2 x 2 windows, grad_accum 2) against
    one process with batch 4 drawn from the same windows; then the DDP checkpoint of step 2
    resumed in one process, and the one-process checkpoint of step 2 resumed by two processes,
    against the uninterrupted one-process run.

    Tolerance: the runs differ only in float32 summation order (a mean over 2 x 32 positions per
    micro-batch against one over 64; gradients averaged over 2 ranks after the all-reduce). A sum
    of n terms is off by at most about n * eps32 relative (n <= 128, eps32 = 1.2e-7: 1.5e-5).
    AdamW moves a parameter by lr * m / (sqrt(v) + eps) (lr = 1e-3), so such an error changes a
    step by about lr * 1.5e-5 = 1.5e-8 where the gradient is large against its rounding, and by
    more where it is near zero (Adam divides a gradient by its own size). Observed after 4 steps:
    at most 7e-8. We allow atol 1e-6: 14x what is observed, 1000x below one step's update (~lr),
    so a wrong or missing window fails it. Adam hides a wrong gradient scale (a sum over ranks
    instead of a mean), so the recorded gradient norms are compared too (rel 1e-5, the bound
    above). The model has no biases: a key bias gets no true gradient (softmax ignores a constant
    added to all scores of a query), only rounding noise, which Adam amplifies (1.7e-7 with
    biases)."""
    common = ["--text", str(small_text), "--block-size", "16", "--n-layer", "1", "--n-head", "2",
              "--d-model", "16", "--no-bias", "--batch-size", "4", "--grad-accum", "2",
              "--lr", "1e-3", "--warmup-steps", "1", "--steps", "4", "--eval-every", "2",
              "--eval-batches", "1", "--device", "cpu", "--no-progress",
              "--checkpoint-every", "2"]
    ddp_dir, ref_dir = tmp_path / "ddp", tmp_path / "ref"
    resumed_dir, ddp_resumed_dir = tmp_path / "resumed", tmp_path / "ddp_resumed"
    done = torchrun_train(tmp_path, *common, "--checkpoint-dir", str(ddp_dir))
    assert "2 processes (gloo)" in done.stdout
    assert done.stdout.count("step 2/4 |") == 1  # rank 0 alone prints the eval line
    assert sorted(p.name for p in ddp_dir.iterdir()) == ["corpus.json", "history.jsonl",
                                                         "step_2.pt", "step_4.pt"]
    assert len((ddp_dir / "history.jsonl").read_text().splitlines()) == 4  # rank 0 alone logs
    load_model(ddp_dir / "step_4.pt")  # strict load into a plain Transformer: no "module." keys

    assert main(["train", *common, "--checkpoint-dir", str(ref_dir)]) == 0
    # the DDP checkpoint of step 2 resumed in one process
    assert main(["train", *common, "--resume", str(ddp_dir / "step_2.pt"),
                 "--checkpoint-dir", str(resumed_dir)]) == 0
    # and the other way round: the one-process checkpoint of step 2 resumed by two processes
    torchrun_train(tmp_path, *common, "--resume", str(ref_dir / "step_2.pt"),
                   "--checkpoint-dir", str(ddp_resumed_dir))
    ref = load_checkpoint(ref_dir / "step_4.pt")
    atol = 1e-6
    for other in (ddp_dir, resumed_dir, ddp_resumed_dir):
        state = load_checkpoint(other / "step_4.pt")
        for name, value in ref["model"].items():
            torch.testing.assert_close(state["model"][name], value, rtol=0, atol=atol,
                                       msg=f"{other.name}: {name}")
        for row, ref_row in zip(state["history"], ref["history"], strict=True):
            assert row["train_loss"] == pytest.approx(ref_row["train_loss"], rel=1e-5, abs=0)
            assert row["grad_norm"] == pytest.approx(ref_row["grad_norm"], rel=1e-5, abs=0)
