"""Sampling text from a causal model, with a key/value cache.

At each step the next token is drawn from softmax(logits / temperature), restricted to the
``top_k`` most likely tokens when given; ``temperature=0`` takes the argmax (greedy).
With the cache, each new token costs one position of attention against stored keys and values
instead of re-running the whole context.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn

from .device import synchronize
from .modes import eval_mode


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits: (B, V) -> next ids (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def _check_sampling(max_new_tokens, temperature, top_k) -> None:
    """A clear ValueError for sampling settings that torch would reject deep inside (or, for a
    negative length, silently ignore)."""
    if (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
            or max_new_tokens < 0):
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is invalid: expected an integer >= 0 "
                         "(how many tokens to add after the prompt).")
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature) or temperature < 0):
        raise ValueError(f"temperature={temperature!r} is invalid: expected a finite number >= 0 "
                         "(0 = greedy, 1 = the model's own distribution).")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} is invalid: expected None or an integer >= 1.")


@torch.no_grad()
def generate_ids(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True, allowed: int | None = None) -> torch.Tensor:
    """idx: (B, T0) -> (B, T0 + max_new_tokens). ``allowed``: sample only ids < allowed
    (keeps special tokens out of generated text)."""
    _check_sampling(max_new_tokens, temperature, top_k)
    if not getattr(model.config, "causal", True):
        raise ValueError("generate needs a causal model (ModelConfig(causal=True)).")
    block = model.config.block_size
    caches = None
    with eval_mode(model):
        for _ in range(max_new_tokens):
            if use_cache:
                if caches is None or caches[0]["k"].size(2) >= block:
                    context = idx[:, -block:]  # (re)fill the cache from the last block_size tokens
                    caches = [{} for _ in range(model.config.n_layer)]
                    logits = model(context, caches=caches)
                else:
                    logits = model(idx[:, -1:], caches=caches)  # one new position
            else:
                logits = model(idx[:, -block:])
            logits = logits[:, -1, :]  # (B, V)
            if allowed is not None:
                logits = logits[:, :allowed]
            idx = torch.cat([idx, _next_token(logits, temperature, top_k, generator)], dim=1)
    return idx


def generate(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, seed: int | None = None,
             use_cache: bool = True) -> str:
    """Continue ``prompt`` by ``max_new_tokens`` characters; returns prompt + continuation."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.stoi.get("\n", 0)]
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T0)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    out = generate_ids(model, idx, max_new_tokens, temperature, top_k, generator, use_cache,
                       allowed=tokenizer.n_chars)
    text = tokenizer.decode(out[0].tolist())
    return text if prompt else text[1:]


def timed_generation(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, *,
                     use_cache: bool, repeats: int = 3, temperature: float = 0.0,
                     seed: int = 0, allowed: int | None = None) -> dict:
    """Generate ``max_new_tokens`` after ``idx`` (B, T0) ``repeats`` times and report what it cost.

    Returns ``ids`` (B, T0 + max_new_tokens) of the last repeat, ``seconds`` (median wall-clock
    time of a repeat) and ``positions``: the query positions the model was run on in one repeat,
    counted by a hook on its input. Without the cache step n re-runs min(T0 + n, block_size)
    positions; with it, the prompt once and then one position per new token (T0 + N - 1 in all,
    while the context fits in block_size). ``temperature``, ``seed`` and ``allowed`` are passed
    to :func:`generate_ids` (0 = greedy).
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1.")
    counted = []
    handle = model.register_forward_pre_hook(lambda _m, args: counted.append(args[0].size(-1)))
    times = []
    try:
        for _ in range(repeats):
            counted.clear()
            generator = torch.Generator(device=idx.device).manual_seed(seed)
            start = time.perf_counter()
            ids = generate_ids(model, idx, max_new_tokens, temperature, None, generator, use_cache,
                               allowed)
            synchronize(idx.device)
            times.append(time.perf_counter() - start)
    finally:
        handle.remove()
    return {"ids": ids, "seconds": statistics.median(times), "positions": sum(counted),
            "use_cache": use_cache}
