"""Run training configurations, cache their results on disk, return tidy records.

A run is identified by its model config, train config, corpus (name and a sha256 of its tokens and
vocabulary), the device type and autocast dtype it actually ran with (``"auto"`` resolved), the
name of a custom model builder (:class:`lmlab.model.Builder`), and a fingerprint of lmlab's own
source code: change any of them and the run is computed again; change nothing and it is read back
from ``$LMLAB_CACHE_DIR/runs`` in milliseconds. Widgets and notebooks call :func:`run_experiment`
and never train by themselves.

A cache entry is trusted only after it reads back whole: a damaged ``result.json`` or ``model.pt``
(truncated, empty, edited by hand) is computed again, with a warning naming it, never returned.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointDamaged, load_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import Corpus, char_corpus
from .device import autocast_dtype, pick_device
from .heads import transformer_with_pair_head
from .history import RunHistory, rows_with
from .model import Builder, Transformer
from .objectives import OBJECTIVES
from .paths import atomic_write, cache_dir
from .regularization import DECAY_RULES, MatrixDecayTransformer
from .train import train

_NOT_IN_KEY = ("progress", "checkpoint_dir", "checkpoint_every", "keep_best", "device")
"""TrainConfig fields that say where and how often to save or show, not what is trained."""

MATRIX_DECAY = Builder("decay_all_matrices", MatrixDecayTransformer)
"""The chapter 5 model whose weight decay acts on every matrix (nanoGPT's rule)."""


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 over lmlab's own .py files: cached runs are recomputed when the code changes."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Result(RunHistory):
    """One finished run: its configs, its history rows, and (if kept) the trained weights and the
    best checkpoint (``evals``, ``column``, ``final_val_loss``, ``best_val_loss`` from
    :class:`lmlab.history.RunHistory`, as a live :class:`lmlab.train.Run`)."""

    key: str
    label: str
    model_config: ModelConfig
    train_config: TrainConfig
    corpus: str
    history: list[dict]
    variant: str | None = None
    model_path: Path | None = None
    cached: bool = False
    info: dict = field(default_factory=dict)
    builder: Callable[[ModelConfig], nn.Module] | None = None
    best_path: Path | None = None  # best.pt, with keep_best=True

    def load_model(self, builder: Callable[[ModelConfig], nn.Module] | None = None) -> nn.Module:
        """The trained model (needs ``keep_model=True`` when the run was made), built by
        ``builder``, by default the one that trained it."""
        if self.model_path is None or not Path(self.model_path).exists():
            raise FileNotFoundError(
                f"run {self.label!r} kept no weights: run it with keep_model=True.")
        model = (builder or self.builder or Transformer)(self.model_config)
        model.load_state_dict(load_checkpoint(self.model_path)["model"])
        return model.eval()


def _corpus_id(corpus: Corpus) -> dict:
    """Name, sizes and a sha256 over the vocabulary and the train and validation tokens: two
    different texts never share an id, however alike their names and sizes."""
    h = hashlib.sha256()
    h.update(json.dumps(corpus.tokenizer.itos).encode())
    for part in (corpus.train, corpus.val):
        h.update(str(part.dtype).encode() + b"|" + str(len(part)).encode() + b"|")
        h.update(part.detach().cpu().contiguous().numpy().tobytes())
    return {"name": corpus.name, "train": len(corpus.train), "val": len(corpus.val),
            "vocab": corpus.tokenizer.vocab_size, "sha256": h.hexdigest()}


def _resolved(train_config: TrainConfig) -> dict:
    """What the run really uses: the device type and the autocast dtype (None = float32)."""
    device = pick_device(train_config.device)
    return {"device_type": device.type, "amp": str(autocast_dtype(device, train_config.dtype))}


def run_key(model_config: ModelConfig, train_config: TrainConfig, corpus: Corpus,
            variant: str | None = None) -> str:
    tc = {k: v for k, v in dataclasses.asdict(train_config).items() if k not in _NOT_IN_KEY}
    blob = json.dumps({"model": dataclasses.asdict(model_config), "train": tc,
                       "resolved": _resolved(train_config), "corpus": _corpus_id(corpus),
                       "variant": variant, "code": code_fingerprint()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def spec_key(kind: str, spec: dict) -> str:
    """The cache key of a result that is not one training run: sha256 over ``kind``, ``spec``
    (JSON-able, naming everything the result depends on: configs, the keys of the runs it starts
    from) and lmlab's code fingerprint, as :func:`run_key` keys a run."""
    blob = json.dumps({"kind": kind, "spec": spec, "code": code_fingerprint()}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _write_json(path: Path, data: dict) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f)


def cached_record(key: str, compute: Callable[[], dict], cache: bool = True) -> tuple[dict, bool]:
    """A JSON record kept in the experiment cache, ``runs/<key>/record.json``: read back when it
    is there and whole, else ``compute()``d and written atomically. Returns (record, cached). For
    results that are not a training history (the learning-rate range test, a distillation or
    policy-gradient run): one cache, one way to write it. A record whose ``info`` says
    ``interrupted`` is returned but never written: the cache holds no partial result."""
    path = cache_dir() / "runs" / key / "record.json"
    if cache and path.exists():
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("it is not a JSON object")
            return record, True
        except (OSError, ValueError) as err:
            warnings.warn(f"the cached record {path} is damaged ({type(err).__name__}: {err}); "
                          "computing it again.", RuntimeWarning, stacklevel=2)
    record = compute()
    if cache and not (record.get("info") or {}).get("interrupted"):
        _write_json(path, record)
    return record, False


def _read_entry(folder: Path, keep_model: bool, keep_best: bool = False) -> dict | None:
    """The cached ``result.json`` of ``folder`` if it and (when there) ``model.pt`` read back
    whole; ``None`` when there is no entry, or when it lacks the weights or the ``best.pt``
    asked for; a damaged entry warns, naming the file, and is treated as missing."""
    meta_path, model_path = folder / "result.json", folder / "model.pt"
    if (not meta_path.exists() or (keep_model and not model_path.exists())
            or (keep_best and not _best_path(folder).exists())):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        history = meta["history"]
        if not (isinstance(history, list) and history
                and all(isinstance(r, dict) and "step" in r for r in history)):
            raise ValueError("its history is not a list of rows with a 'step'")
        if not isinstance(meta.get("info", {}), dict):
            raise ValueError("its 'info' is not a dict")
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(f"the cached result {meta_path} is damaged ({type(err).__name__}: {err}); "
                      "removed, computing the run again.", RuntimeWarning, stacklevel=3)
        meta_path.unlink(missing_ok=True)
        return None
    if model_path.exists():
        try:
            load_checkpoint(model_path)
        except CheckpointDamaged as err:
            warnings.warn(f"the cached weights {model_path} are damaged ({err}); removed"
                          + (", computing the run again." if keep_model else "."),
                          RuntimeWarning, stacklevel=3)
            model_path.unlink(missing_ok=True)
            return None if keep_model else meta
    return meta


def _best_path(folder: Path) -> Path:
    return folder / "checkpoints" / "best.pt"


def _named(builder: Callable[[ModelConfig], nn.Module] | None,
           variant: str | None) -> Builder | None:
    """The builder with its cache name: a :class:`lmlab.model.Builder` names itself; a plain
    function needs ``variant``."""
    if builder is None:
        if variant:
            raise ValueError(f"variant={variant!r} names a builder, but none was given.")
        return None
    if isinstance(builder, Builder):
        if variant and variant != builder.name:
            raise ValueError(f"variant={variant!r} contradicts the builder's own name "
                             f"{builder.name!r}: drop variant.")
        return builder
    if not variant:
        raise ValueError("a custom builder needs a name in the cache key, so cached runs of "
                         "different builders are not confused: pass "
                         "builder=lmlab.model.Builder('its-name', function).")
    return Builder(variant, builder)


def run_experiment(model_config: ModelConfig, train_config: TrainConfig,
                   corpus: Corpus | str = "tinyshakespeare", *, label: str | None = None,
                   builder: Callable[[ModelConfig], nn.Module] | None = None,
                   variant: str | None = None, keep_model: bool = False, keep_best: bool = False,
                   cache: bool = True, callback: Callable[[dict], None] | None = None) -> Result:
    """Train (or read back) one configuration.

    The model is built by ``builder(model_config)`` (default :class:`lmlab.Transformer`) right
    after ``torch.manual_seed(train_config.seed)``, so a run depends only on its configs. A custom
    builder is a :class:`lmlab.model.Builder`, whose name goes into the cache key (a plain
    function may still be given with ``variant=`` naming it).

    ``keep_model``: keep the final weights (``Result.load_model``). ``keep_best``: save
    ``best.pt`` at each new best validation loss (``TrainConfig.keep_best``) in the run's cache
    folder, ``Result.best_path``; a cached entry without it is trained again.
    """
    builder = _named(builder, variant)
    variant = builder.name if builder is not None else None
    corpus = char_corpus(corpus) if isinstance(corpus, str) else corpus
    key = run_key(model_config, train_config, corpus, variant)
    label = label or key[:8]
    folder = cache_dir() / "runs" / key
    meta_path = folder / "result.json"
    model_path = folder / "model.pt"
    best_path = _best_path(folder)
    meta = _read_entry(folder, keep_model, keep_best) if cache else None
    if meta is not None:
        return Result(key, label, model_config, train_config, corpus.name, meta["history"],
                      variant, model_path if model_path.exists() else None, True,
                      meta.get("info", {}), builder, best_path if keep_best else None)
    run_config = train_config  # what train() gets: with keep_best, where best.pt goes
    if keep_best:
        run_config = train_config.replace(keep_best=True, checkpoint_dir=str(best_path.parent))
    torch.manual_seed(train_config.seed)
    model = (builder or Transformer)(model_config)
    run = train(model, corpus, run_config, callback=callback)
    info = {"interrupted": run.interrupted, "stopped_early": run.stopped_early}
    result = Result(key, label, model_config, train_config, corpus.name, run.history, variant,
                    None, False, info, builder, run.best_path)
    if run.interrupted:  # never cache a partial run as if it were the real one
        return result
    if cache:
        folder.mkdir(parents=True, exist_ok=True)
        if keep_model:
            result.model_path = save_checkpoint({"model": model.state_dict()}, model_path)
        _write_json(meta_path, {"history": run.history, "info": info, "label": label,
                                "model_config": dataclasses.asdict(model_config),
                                "train_config": dataclasses.asdict(train_config),
                                "corpus": _corpus_id(corpus), "variant": variant})
    return result


def objective_run(model_config: ModelConfig, train_config: TrainConfig, objective: str,
                  mask_rate: float = 0.15, pair_weight: float = 1.0,
                  corpus: Corpus | str = "tinyshakespeare", **kwargs) -> Result:
    """Run (or read back) ``objective`` on the given sizes, as its record in
    :data:`lmlab.objectives.OBJECTIVES` says: the model is causal or bidirectional
    (``Objective.model_causal``), gets a pair head when the objective trains one, and settings the
    objective ignores are reset to their defaults (so equal runs share one cache entry).
    ``kwargs`` go to :func:`run_experiment`."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} is invalid: expected one of {list(OBJECTIVES)}.")
    facts = OBJECTIVES[objective]
    mask_rate = mask_rate if facts.uses_mask_rate else 0.15
    pair_weight = pair_weight if facts.pair_head else 1.0
    return run_experiment(
        model_config.replace(causal=facts.model_causal),
        train_config.replace(objective=objective, mask_rate=mask_rate, pair_weight=pair_weight),
        corpus, label=objective, builder=transformer_with_pair_head if facts.pair_head else None,
        **kwargs)


def regularized_run(model_config: ModelConfig, train_config: TrainConfig, corpus: Corpus, *,
                    dropout: float, weight_decay: float, label_smoothing: float,
                    data_fraction: float, decay_rule: str = "linear_weights",
                    **kwargs) -> Result:
    """One :func:`run_experiment` of the base configs with chapter 5's four knobs set:
    ``ModelConfig.dropout``, ``TrainConfig.weight_decay`` and ``label_smoothing``, and the first
    ``data_fraction`` of the training text (cached on disk: the chapter and its explorer share
    it). ``decay_rule`` (one of :data:`lmlab.regularization.DECAY_RULES`) picks the tensors the
    decay acts on. ``kwargs`` (``keep_model``, ``callback``...) go to :func:`run_experiment`."""
    if decay_rule not in DECAY_RULES:
        raise ValueError(f"decay_rule={decay_rule!r} is invalid: expected one of {DECAY_RULES}.")
    mc = model_config.replace(dropout=dropout)
    tc = train_config.replace(weight_decay=weight_decay, label_smoothing=label_smoothing)
    label = (f"dropout={dropout:g}, wd={weight_decay:g}, smoothing={label_smoothing:g}, "
             f"data={data_fraction:g}")
    builder = None
    if decay_rule == "matrices":
        label += ", decay: every matrix"
        builder = MATRIX_DECAY
    return run_experiment(mc, tc, corpus.subset(data_fraction), label=label, builder=builder,
                          **kwargs)


def grid(**axes: Iterable) -> list[dict]:
    """Cartesian product of named value lists: grid(lr=[1e-3, 3e-3], n_layer=[2, 4]) -> 4 dicts."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def sweep(model_config: ModelConfig, train_config: TrainConfig, points: list[dict],
          corpus: Corpus | str = "tinyshakespeare", **kwargs) -> list[Result]:
    """Run each point of ``points``; a key names a field of ModelConfig or TrainConfig."""
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    results = []
    for point in points:
        unknown = set(point) - model_fields - train_fields
        if unknown:
            raise ValueError(f"sweep point {point} names unknown fields {sorted(unknown)}.")
        mc = model_config.replace(**{k: v for k, v in point.items() if k in model_fields})
        tc = train_config.replace(**{k: v for k, v in point.items() if k in train_fields})
        label = ", ".join(f"{k}={v}" for k, v in point.items())
        results.append(run_experiment(mc, tc, corpus, label=label, **kwargs))
    return results


def records(results: Iterable[Result], metrics: tuple[str, ...] = ("val_loss",)) -> list[dict]:
    """Tidy rows, one per (run, evaluation step): label, step, tokens, lr and the metrics."""
    rows = []
    for r in results:
        for h in rows_with(r.history, *metrics):
            rows.append({"label": r.label, "step": h["step"], "tokens": h["tokens"],
                         "lr": h["lr"], **{m: h[m] for m in metrics}})
    return rows
