"""The command line: flags and config files validated by the configs, resume, history, sample."""

import json
import shutil
import sys

import pytest
import torch

from lmlab import ModelConfig, TrainConfig, cli, generate
from lmlab.checkpoint import load_checkpoint, load_model
from lmlab.cli import FIELDS, build_configs, main, read_config_file
from lmlab.data import load_text
from lmlab.distributed import DDP_OBJECTIVES
from lmlab.objectives import OBJECTIVES


@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(load_text()[:20_000], encoding="utf-8")
    return path


def tiny(small_text, *extra):
    return ["train", "--text", str(small_text), "--block-size", "16", "--n-layer", "1",
            "--n-head", "2", "--d-model", "16", "--batch-size", "4", "--warmup-steps", "1",
            "--eval-every", "3", "--eval-batches", "1", "--device", "cpu", "--no-progress",
            *extra]


def test_help_names_every_config_field(capsys):
    """`train --help` lists a flag for every field of both configs (catches a field added to a
    config without a flag). `python -m lmlab` itself runs in test_distributed's torchrun test."""
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in FIELDS:
        assert "--" + name.replace("_", "-") in out, name
    assert "torchrun" in out


@pytest.mark.parametrize("flags, field_values", [
    (["--n-head", "3"], {"model": {"n_head": 3, "d_model": 16}}),
    (["--lr", "fast"], {"train": {"lr": "fast"}}),
    (["--steps", "1e3"], {"train": {"steps": "1e3"}}),
    (["--schedule", "cosine_annealing"], {"train": {"schedule": "cosine_annealing"}}),
])
def test_bad_flag_value_gives_the_configs_message_and_status_2(small_text, capsys, flags,
                                                               field_values):
    """The message on stderr is the one the config itself raises for that value (catches a
    flag converted or defaulted silently, or a traceback instead of a message)."""
    with pytest.raises(ValueError) as expected:
        if "model" in field_values:
            ModelConfig(vocab_size=66, **field_values["model"])
        else:
            TrainConfig(**field_values["train"])
    assert main(tiny(small_text, *flags)) == 2
    err = capsys.readouterr().err
    assert str(expected.value) in err
    assert "Traceback" not in err


def test_config_file_keys_values_and_precedence(tmp_path, small_text, capsys):
    """TOML and JSON files give config fields; flags override them; a misspelt key or a bad
    value ends with status 2 and a message naming it (catches keys silently ignored, flags that
    lose to the file, a file value not validated)."""
    if sys.version_info >= (3, 11):  # tomllib; Python 3.10 reads JSON config files only
        toml = tmp_path / "run.toml"
        toml.write_text('n_layer = 3\nlr = 0.01\nbetas = [0.8, 0.95]\nkeep_best = true\n')
        assert read_config_file(toml) == {"n_layer": 3, "lr": 0.01, "betas": (0.8, 0.95),
                                          "keep_best": True}
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"n_layer": 3, "lr": 0.01, "betas": [0.8, 0.95],
                                   "keep_best": True}))
    values = read_config_file(as_json)
    model, train = build_configs(values, {"n_layer": 1}, vocab_size=66)
    assert (model.n_layer, train.lr, train.betas, train.keep_best) == (1, 0.01, (0.8, 0.95), True)
    assert model.vocab_size == 66 and train.checkpoint_dir == "checkpoints"

    typo = tmp_path / "typo.toml"
    typo.write_text("n_layers = 2\n")
    assert main(tiny(small_text, "--config", str(typo))) == 2
    assert "unknown key 'n_layers'" in capsys.readouterr().err  # and it suggests n_layer

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dropout": 1.5}))
    with pytest.raises(ValueError) as expected:
        ModelConfig(vocab_size=66, dropout=1.5)
    assert main(tiny(small_text, "--config", str(bad))) == 2
    assert str(expected.value) in capsys.readouterr().err

    not_bool = tmp_path / "flag.json"
    not_bool.write_text(json.dumps({"compile": "yes"}))
    assert main(tiny(small_text, "--config", str(not_bool))) == 2
    assert "TrainConfig.compile='yes' is invalid: expected true or false." in (
        capsys.readouterr().err)


def test_pair_objectives_are_refused_as_the_registry_says(small_text, capsys):
    """The command line trains what DDP can (objectives reaching the model through its forward,
    as their records in lmlab.objectives.OBJECTIVES say) and names them when asked for another."""
    assert tuple(sorted(n for n, o in OBJECTIVES.items() if not o.pair_head)) == DDP_OBJECTIVES
    assert main(tiny(small_text, "--objective", "mlm_sop", "--no-causal")) == 2
    assert ("TrainConfig.objective='mlm_sop' is not available from the command line: expected "
            "one of 'clm', 'mlm', 'prefix', 'span' (the pair objectives need a model with a pair "
            "head: see lmlab.heads in a notebook).") in capsys.readouterr().err


def without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_resume_from_the_command_line_equals_an_uninterrupted_run(tmp_path, small_text, capsys):
    """A 6-step run that lost its last checkpoint (as if killed after step 3's) and has a damaged
    newer file: `--resume` alone skips the damaged file, continues from step 3 with the
    checkpoint's configs, and ends with the same weights, optimizer state and history (file
    included) as the uninterrupted run, exactly (CPU, dropout on so the RNG state matters).
    Catches: a damaged file taken for the newest checkpoint, configs not taken from the
    checkpoint, RNG not restored, history.jsonl keeping the lost steps' rows twice."""
    folder = tmp_path / "run"
    assert main(tiny(small_text, "--dropout", "0.1", "--steps", "6", "--checkpoint-every", "3",
                     "--checkpoint-dir", str(folder))) == 0
    full = load_checkpoint(folder / "step_6.pt")
    full_log = (folder / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in full_log] == [1, 2, 3, 4, 5, 6]

    (folder / "step_6.pt").unlink()
    (folder / "step_5.pt").write_bytes(b"not a checkpoint")  # damaged, newer than step_3.pt
    with pytest.warns(RuntimeWarning, match="skipping .*step_5.pt"):
        assert main(["train", "--resume", "--checkpoint-dir", str(folder)]) == 0
    assert f"resuming {folder / 'step_3.pt'}" in capsys.readouterr().out
    resumed = load_checkpoint(folder / "step_6.pt")
    for name, value in full["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    for a, b in zip(resumed["optimizer"]["state"].values(), full["optimizer"]["state"].values(),
                    strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert without_seconds(resumed["history"]) == without_seconds(full["history"])
    log = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    assert without_seconds(log) == without_seconds(json.loads(line) for line in full_log)

    # a resumed run keeps its model: asking for another shape is a usage error
    assert main(["train", "--resume", "--checkpoint-dir", str(folder), "--d-model", "32"]) == 2
    assert "ModelConfig.d_model=32 differs from the checkpoint's d_model=16" in (
        capsys.readouterr().err)
    shutil.rmtree(folder)
    assert main(["train", "--resume", "--checkpoint-dir", str(folder)]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


class _JsonFailingOnCall:
    """The json module, except that its ``n``-th ``dumps`` raises OSError (a full disk)."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __getattr__(self, name):
        return getattr(json, name)

    def dumps(self, obj, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise OSError(28, "No space left on device")
        return json.dumps(obj, *args, **kwargs)


def test_a_crash_while_resume_rewrites_the_history_keeps_the_old_file(tmp_path, small_text,
                                                                      monkeypatch):
    """`--resume` writes the checkpoint's rows to history.jsonl before training on; a failure
    in the middle of that (here the second row) leaves the file as it was, with no temporary
    file behind. Before the fix the file was opened with "w" and so truncated first: the crash
    lost every row."""
    folder = tmp_path / "run"
    assert main(tiny(small_text, "--steps", "6", "--checkpoint-every", "3",
                     "--checkpoint-dir", str(folder))) == 0
    history = folder / "history.jsonl"
    before = history.read_text()
    assert len(before.splitlines()) == 6
    monkeypatch.setattr(cli, "json", _JsonFailingOnCall(2))
    with pytest.raises(OSError, match="No space left"):
        main(["train", "--resume", str(folder / "step_3.pt"), "--checkpoint-dir", str(folder)])
    assert history.read_text() == before
    assert sorted(p.name for p in folder.iterdir()) == [
        "corpus.json", "history.jsonl", "step_3.pt", "step_6.pt"]


def test_sample_continues_the_prompt_like_generate(tmp_path, small_text, capsys):
    """`sample` prints what lmlab.generate gives for the checkpoint's model (greedy: one answer),
    and a prompt outside the vocabulary is a usage error with the tokenizer's message."""
    folder = tmp_path / "run"
    assert main(tiny(small_text, "--steps", "3", "--checkpoint-dir", str(folder))) == 0
    capsys.readouterr()
    checkpoint = str(folder / "step_3.pt")
    assert main(["sample", checkpoint, "--prompt", "ROMEO:", "--max-new-tokens", "20",
                 "--temperature", "0", "--device", "cpu"]) == 0
    model, tokenizer = load_model(checkpoint)
    expected = generate(model, tokenizer, "ROMEO:", 20, temperature=0)
    assert capsys.readouterr().out == expected + "\n"
    assert len(expected) == len("ROMEO:") + 20

    assert main(["sample", checkpoint, "--prompt", "\u20ac", "--device", "cpu"]) == 2
    assert "is not in the vocabulary" in capsys.readouterr().err
