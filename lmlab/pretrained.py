"""The pretrained character model that the chapters after pretraining start from.

Chapters 6 (fine-tuning, adapters, prompts) and 7 (distillation, reinforcement learning) adapt a
causal character Transformer that the workbook pretrains itself on Tiny Shakespeare. Its run goes
through :func:`lmlab.experiments.run_experiment` with ``keep_model=True``, so the first chapter
that asks for it pays the training once and every later cell, chapter and explorer reads the
weights back from the cache.

Sizes per profile (``ci``: seconds, for tests; ``cpu``: about a minute on a laptop; ``gpu``:
nanoGPT's Shakespeare-char shape) are in :data:`BASE_SIZES`.
"""

from __future__ import annotations

from .config import ModelConfig, TrainConfig
from .data import Corpus, char_corpus
from .device import profile as current_profile
from .experiments import Result, run_experiment
from .model import Transformer

BASE_SIZES: dict[str, dict[str, dict]] = {
    "ci": {
        "model": dict(n_layer=2, n_head=4, d_model=64, block_size=64),
        "train": dict(steps=400, batch_size=32, lr=3e-3, warmup_steps=40, eval_every=100,
                      eval_batches=10),
    },
    "cpu": {
        "model": dict(n_layer=4, n_head=4, d_model=128, block_size=64),
        "train": dict(steps=1000, batch_size=32, lr=3e-3, warmup_steps=100, eval_every=250,
                      eval_batches=20),
    },
    "gpu": {
        "model": dict(n_layer=6, n_head=6, d_model=384, block_size=256, dropout=0.2),
        "train": dict(steps=5000, batch_size=64, lr=1e-3, warmup_steps=100, eval_every=500,
                      eval_batches=50),
    },
}


def base_configs(corpus: Corpus, profile: str | None = None,
                 seed: int = 0) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs of the pretrained base model for ``profile``."""
    profile = profile or current_profile()
    if profile not in BASE_SIZES:
        raise ValueError(f"profile={profile!r} is invalid: expected one of "
                         f"{', '.join(BASE_SIZES)}.")
    sizes = BASE_SIZES[profile]
    model_config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, causal=True,
                               **sizes["model"])
    train_config = TrainConfig(seed=seed, schedule="cosine", **sizes["train"])
    return model_config, train_config


def pretrained_base(profile: str | None = None, *, seed: int = 0,
                    corpus: Corpus | str = "tinyshakespeare") -> tuple[Transformer, Result]:
    """The pretrained causal character model (in eval mode) and its run, trained once and cached.

    Every call returns a fresh copy of the weights, so a caller may fine-tune it in place.
    """
    corpus = char_corpus(corpus) if isinstance(corpus, str) else corpus
    model_config, train_config = base_configs(corpus, profile, seed)
    result = run_experiment(model_config, train_config, corpus, label="pretrained base",
                            keep_model=True)
    if result.model_path is None:  # an interrupted run keeps no weights and is not cached
        raise RuntimeError("pretraining the base model was interrupted before it finished; "
                           "run the cell again to train it (nothing was cached).")
    return result.load_model(), result
