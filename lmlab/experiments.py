"""Run training configurations, cache their results on disk, return tidy records.

A run is identified by its model config, train config, corpus (name and a sha256 of its tokens and
vocabulary), the device type and autocast dtype it actually ran with (``"auto"`` resolved), an
optional ``variant`` naming a custom model builder, and a fingerprint of lmlab's own source code:
change any of them and the run is computed again; change nothing and it is read back from
``$LMLAB_CACHE_DIR/runs`` in milliseconds. Widgets and notebooks call :func:`run_experiment`
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
from .model import Transformer
from .paths import atomic_write, cache_dir
from .train import train

_NOT_IN_KEY = ("progress", "checkpoint_dir", "checkpoint_every", "device")


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 over lmlab's own .py files: cached runs are recomputed when the code changes."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Result:
    """One finished run: its configs, its history rows, and (if kept) the trained weights."""

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

    def column(self, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.history if r.get(key) is not None]
        return [r["step"] for r in rows], [r[key] for r in rows]

    @property
    def final_val_loss(self) -> float:
        return self.column("val_loss")[1][-1]

    @property
    def best_val_loss(self) -> float:
        return min(self.column("val_loss")[1])

    def load_model(self, builder: Callable[[ModelConfig], nn.Module] | None = None) -> nn.Module:
        """The trained model (needs ``keep_model=True`` when the run was made)."""
        if self.model_path is None or not Path(self.model_path).exists():
            raise FileNotFoundError(
                f"run {self.label!r} kept no weights: run it with keep_model=True.")
        model = (builder or Transformer)(self.model_config)
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


def _write_json(path: Path, data: dict) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f)


def _read_entry(folder: Path, keep_model: bool) -> dict | None:
    """The cached ``result.json`` of ``folder`` if it and (when there) ``model.pt`` read back
    whole; ``None`` when there is no entry; a damaged entry warns, naming the file, and is
    treated as missing."""
    meta_path, model_path = folder / "result.json", folder / "model.pt"
    if not meta_path.exists() or (keep_model and not model_path.exists()):
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


def run_experiment(model_config: ModelConfig, train_config: TrainConfig,
                   corpus: Corpus | str = "tinyshakespeare", *, label: str | None = None,
                   builder: Callable[[ModelConfig], nn.Module] | None = None,
                   variant: str | None = None, keep_model: bool = False, cache: bool = True,
                   callback: Callable[[dict], None] | None = None) -> Result:
    """Train (or read back) one configuration.

    The model is built by ``builder(model_config)`` (default :class:`lmlab.Transformer`) right
    after ``torch.manual_seed(train_config.seed)``, so a run depends only on its configs. A custom
    ``builder`` must come with a ``variant`` string that names it in the cache key.
    """
    if builder is not None and not variant:
        raise ValueError("a custom builder needs variant='...' naming it, so cached runs of "
                         "different builders are not confused.")
    corpus = char_corpus(corpus) if isinstance(corpus, str) else corpus
    key = run_key(model_config, train_config, corpus, variant)
    label = label or key[:8]
    folder = cache_dir() / "runs" / key
    meta_path = folder / "result.json"
    model_path = folder / "model.pt"
    meta = _read_entry(folder, keep_model) if cache else None
    if meta is not None:
        return Result(key, label, model_config, train_config, corpus.name, meta["history"],
                      variant, model_path if model_path.exists() else None, True,
                      meta.get("info", {}))
    torch.manual_seed(train_config.seed)
    model = (builder or Transformer)(model_config)
    run = train(model, corpus, train_config, callback=callback)
    info = {"interrupted": run.interrupted, "stopped_early": run.stopped_early}
    result = Result(key, label, model_config, train_config, corpus.name, run.history, variant,
                    None, False, info)
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
        for h in r.history:
            if all(h.get(m) is not None for m in metrics):
                rows.append({"label": r.label, "step": h["step"], "tokens": h["tokens"],
                             "lr": h["lr"], **{m: h[m] for m in metrics}})
    return rows


def cached_record(kind: str, spec: dict, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """A computation that is not one :func:`run_experiment` (a distillation run, a policy-gradient
    run), computed once per ``spec`` and read back from ``$LMLAB_CACHE_DIR/<kind>/<key>`` after.

    ``spec`` (JSON-able) must name everything the result depends on (configs, the keys of the runs
    it starts from, the corpus, the device type); the key adds lmlab's code fingerprint, as
    :func:`run_key` does. ``compute()`` returns a JSON-able dict, which is stored whole (atomic
    write) unless it says ``{"info": {"interrupted": True}}``. A damaged entry warns, naming the
    file, and is computed again. Returns (record, read_from_cache).
    """
    blob = json.dumps({"kind": kind, "spec": spec, "code": code_fingerprint()}, sort_keys=True,
                      default=str)
    path = cache_dir() / kind / hashlib.sha256(blob.encode()).hexdigest()[:20] / "record.json"
    if path.exists():
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("it holds no dict")
            return record, True
        except (OSError, ValueError) as err:
            warnings.warn(f"the cached record {path} is damaged ({type(err).__name__}: {err}); "
                          "removed, computing it again.", RuntimeWarning, stacklevel=2)
            path.unlink(missing_ok=True)
    record = compute()
    if not (record.get("info") or {}).get("interrupted"):
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, record)
    return record, False
