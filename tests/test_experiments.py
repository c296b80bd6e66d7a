"""Experiment runner: caching by configuration, custom builders, sweeps and tidy records."""

import json

import pytest
import torch

from lmlab import ModelConfig, Run, TrainConfig, Transformer, experiments
from lmlab.data import CharTokenizer, Corpus
from lmlab.experiments import grid, records, run_experiment, run_key, sweep
from lmlab.heads import TransformerWithPairHead, transformer_with_pair_head
from lmlab.init import initialized
from lmlab.model import Builder
from lmlab.mup import mup_builder


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    mc = ModelConfig(vocab_size=69, block_size=16, n_layer=1, n_head=2, d_model=16)
    tc = TrainConfig(steps=6, batch_size=4, warmup_steps=1, eval_every=3, eval_batches=1,
                     progress=False, device="cpu")
    return mc, tc, tmp_path


def test_second_run_is_read_from_cache(setup):
    mc, tc, tmp = setup
    first = run_experiment(mc, tc, keep_model=True)
    second = run_experiment(mc, tc, keep_model=True)
    assert not first.cached and second.cached
    assert first.history == second.history
    model = second.load_model()
    assert isinstance(model, Transformer)
    assert (tmp / "runs" / first.key / "result.json").exists()


def test_key_changes_with_any_setting(setup):
    mc, tc, _ = setup
    from lmlab.data import char_corpus

    c = char_corpus()
    keys = {run_key(mc, tc, c), run_key(mc.replace(n_layer=2), tc, c),
            run_key(mc, tc.replace(lr=2e-3), c), run_key(mc, tc, c.subset(0.5)),
            run_key(mc, tc, c, variant="zeros")}
    assert len(keys) == 5
    assert run_key(mc, tc.replace(progress=True), c) == run_key(mc, tc, c)  # display only


def test_custom_builder_needs_a_name(setup):
    mc, tc, _ = setup
    with pytest.raises(ValueError, match="name in the cache key"):
        run_experiment(mc, tc, builder=Transformer)
    with pytest.raises(ValueError, match="contradicts"):
        run_experiment(mc, tc, builder=Builder("plain", Transformer), variant="other")
    with pytest.raises(ValueError, match="non-empty"):
        Builder("", Transformer)


def test_a_builder_names_its_runs_and_rebuilds_its_cached_model(setup):
    """Two builders, two cache entries; a cached Result loads its weights into the builder that
    trained them (a plain Transformer would refuse the pair head's weights)."""
    mc, tc, _ = setup
    pair = run_experiment(mc, tc, builder=transformer_with_pair_head, keep_model=True)
    plain = run_experiment(mc, tc, keep_model=True)
    assert pair.key != plain.key and pair.variant == "pair_head"
    again = run_experiment(mc, tc, builder=transformer_with_pair_head, keep_model=True)
    assert again.cached and again.key == pair.key
    assert isinstance(again.load_model(), TransformerWithPairHead)
    old_way = run_experiment(mc, tc, builder=transformer_with_pair_head.build, variant="pair_head")
    assert old_way.key == pair.key  # a plain function named by variant= shares the entry
    assert mup_builder(16).name != mup_builder(32).name
    assert initialized("he_normal").name != initialized("he_normal", gain=2.0).name


def test_keep_best_keeps_best_pt_in_the_cache_and_retrains_without_it(setup):
    mc, tc, _ = setup
    result = run_experiment(mc, tc, keep_best=True)
    assert result.best_path.exists() and not result.cached
    again = run_experiment(mc, tc, keep_best=True)
    assert again.cached and again.best_path == result.best_path
    assert again.history == result.history
    # keep_best only says what to save: the same entry as a run without it
    assert run_experiment(mc, tc).key == result.key
    state = torch.load(result.best_path, weights_only=True)
    assert state["best"]["val_loss"] == result.best_val_loss
    result.best_path.unlink()  # a cached result without its checkpoint is trained again
    third = run_experiment(mc, tc, keep_best=True)
    assert third.best_path.exists() and not third.cached
    assert third.column("val_loss") == result.column("val_loss")  # same seed, same run


def test_sweep_and_records(setup):
    mc, tc, _ = setup
    points = grid(lr=[1e-3, 3e-3], n_layer=[1, 2])
    assert len(points) == 4
    results = sweep(mc, tc, points)
    assert [r.model_config.n_layer for r in results] == [1, 2, 1, 2]
    assert results[1].label == "lr=0.001, n_layer=2"
    rows = records(results)
    assert len(rows) == 4 * 2 and {"label", "step", "val_loss"} <= set(rows[0])
    with pytest.raises(ValueError, match="unknown fields"):
        sweep(mc, tc, [{"learning_rate": 1e-3}])


def test_runs_depend_only_on_configs(setup):
    mc, tc, _ = setup
    a = run_experiment(mc, tc, cache=False)
    torch.manual_seed(999)  # global state must not leak into the result
    b = run_experiment(mc, tc, cache=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


DAMAGED_ENTRIES = {
    "truncated json": ("result.json", lambda b: b[: len(b) // 2]),
    "empty json": ("result.json", lambda b: b""),
    "empty object": ("result.json", lambda b: b"{}"),
    "a list": ("result.json", lambda b: b"[]"),
    "no rows": ("result.json", lambda b: json.dumps({"history": []}).encode()),
    "truncated weights": ("model.pt", lambda b: b[: len(b) // 2]),
}


@pytest.mark.parametrize("damage", list(DAMAGED_ENTRIES))
def test_damaged_cache_entry_is_computed_again(setup, damage):
    """Before the fix: JSONDecodeError, KeyError, or cached=True with weights that fail to load."""
    mc, tc, tmp = setup
    first = run_experiment(mc, tc, keep_model=True)
    name, spoil = DAMAGED_ENTRIES[damage]
    path = tmp / "runs" / first.key / name
    path.write_bytes(spoil(path.read_bytes()))
    with pytest.warns(RuntimeWarning, match=name):
        again = run_experiment(mc, tc, keep_model=True)
    assert not again.cached and _strip(again.history) == _strip(first.history)
    assert isinstance(again.load_model(), Transformer)
    third = run_experiment(mc, tc, keep_model=True)  # the entry was written again, whole
    assert third.cached and third.history == again.history


def test_failed_cache_write_leaves_no_temporary_file(setup, monkeypatch):
    mc, tc, tmp = setup

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(experiments.json, "dump", full_disk)
    with pytest.raises(OSError, match="No space"):
        run_experiment(mc, tc)
    folder = next((tmp / "runs").iterdir())
    assert [p.name for p in folder.iterdir()] == []  # no tmp*.tmp, no half-written result


def test_key_tells_apart_texts_of_equal_name_and_size_and_the_dtype_used(setup, monkeypatch):
    mc, tc, _ = setup
    tok = CharTokenizer("abcdefgh")
    a = Corpus("notes", tok, torch.tensor([0, 1, 2, 3] * 50), torch.tensor([4, 5, 6, 7] * 10))
    b = Corpus("notes", tok, torch.tensor([3, 2, 1, 0] * 50), torch.tensor([4, 5, 6, 7] * 10))
    assert run_key(mc, tc, a) != run_key(mc, tc, b)
    assert run_key(mc, tc, a) == run_key(mc, tc, Corpus("notes", tok, a.train.clone(), a.val))
    fp32 = run_key(mc, tc, a)  # dtype="auto" resolves to float32 on the CPU ...
    monkeypatch.setattr(experiments, "autocast_dtype", lambda device, pref: torch.bfloat16)
    assert run_key(mc, tc, a) != fp32  # ... and a bf16 run of the same config is another run


def test_cached_record_computes_once_recomputes_a_damaged_entry_and_skips_interrupted(
        tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"history": [{"step": 1, "x": len(calls)}], "info": {"interrupted": False}}

    key = experiments.spec_key("demo", {"a": 1})
    assert key != experiments.spec_key("demo", {"a": 2}) != experiments.spec_key("other", {"a": 2})
    first, cached = experiments.cached_record(key, compute)
    again, cached_again = experiments.cached_record(key, compute)
    assert (cached, cached_again, len(calls)) == (False, True, 1) and first == again
    (tmp_path / "runs" / key / "record.json").write_text('{"history": [')  # truncated
    with pytest.warns(RuntimeWarning, match="damaged"):
        redone, cached = experiments.cached_record(key, compute)
    assert not cached and redone["history"][0]["x"] == 2
    # a partial (interrupted) result is returned but not stored: the next call computes it whole
    partial_key = experiments.spec_key("demo", {"a": 3})
    partial, _ = experiments.cached_record(
        partial_key, lambda: {"history": [], "info": {"interrupted": True}})
    assert partial["info"]["interrupted"]
    assert not experiments.cached_record(partial_key, compute)[1]


def test_run_and_result_read_a_history_the_same_way():
    """One history API: a live Run and a cached Result give the same answers, None before the
    first evaluation (a Result used to raise IndexError there while a Run returned None)."""
    rows = [{"step": 1, "train_loss": 3.0}, {"step": 2, "train_loss": 2.9, "val_loss": 2.5},
            {"step": 3, "train_loss": 2.8, "val_loss": 2.7}]
    mc = ModelConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, d_model=8)
    for history, final, best in ((rows, 2.7, 2.5), (rows[:1], None, None)):
        run = Run(Transformer(mc), TrainConfig(), history)
        result = experiments.Result("k", "label", mc, TrainConfig(), "tiny", history)
        for h in (run, result):
            assert (h.final_val_loss, h.best_val_loss) == (final, best)
            assert h.evals == [r for r in history if "val_loss" in r]
            assert h.column("train_loss") == ([r["step"] for r in history],
                                              [r["train_loss"] for r in history])
