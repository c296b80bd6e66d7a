"""One Transformer, causal (GPT) or bidirectional (BERT-style encoder), pre-LayerNorm.

    h_0 = E[x] (+ P)                         token embedding (+ positions, unless RoPE / none)
    h_l = h_{l-1} + Attn(LN(h_{l-1}))         for l = 1 .. L, each block does both lines
    h_l = h_l + MLP(LN(h_l))
    logits = LN(h_L) E^T                       output layer tied to the embedding (Press & Wolf)

Default initialization is GPT-2's: N(0, 0.02) for every weight matrix and embedding, zero biases,
and the two residual output projections of each block scaled by 1/sqrt(2L), so that the sum of 2L
residual branches keeps a variance independent of depth (Radford et al., 2019).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .attention import MultiHeadAttention, RotaryEmbedding, sinusoidal_positions
from .config import ModelConfig


@dataclass(frozen=True)
class Builder:
    """A model builder that carries its own name: ``builder(config) -> nn.Module``.

    :func:`lmlab.experiments.run_experiment` puts ``name`` in the cache key, so runs of two
    builders are never confused, and a cached :class:`lmlab.experiments.Result` rebuilds its model
    with the builder that trained it. Two builders with one name must build the same model."""

    name: str
    build: Callable[[ModelConfig], nn.Module]

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Builder name={self.name!r} is invalid: expected a non-empty string "
                             "naming what the builder makes, e.g. 'pair_head'.")

    def __call__(self, config: ModelConfig) -> nn.Module:
        return self.build(config)


class MLP(nn.Module):
    """x -> W_2 GELU(W_1 x): widen by ``mlp_ratio``, nonlinearity, project back."""

    def __init__(self, d_model: int, ratio: int, dropout: float, bias: bool):
        super().__init__()
        self.fc = nn.Linear(d_model, ratio * d_model, bias=bias)
        self.act = nn.GELU()
        self.proj = nn.Linear(ratio * d_model, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x)); dropout on both residual branches."""

    def __init__(self, config: ModelConfig, rope: RotaryEmbedding | None):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attn = MultiHeadAttention(config.d_model, config.n_head, dropout=config.dropout,
                                       bias=config.bias, backend=config.attention, rope=rope)
        self.ln2 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config.d_model, config.mlp_ratio, config.dropout, config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, mask=None, *, is_causal=False, cache=None, return_weights=False):
        a = self.attn(self.ln1(x), mask, is_causal=is_causal, cache=cache,
                      return_weights=return_weights)
        a, weights = a if return_weights else (a, None)
        x = x + self.drop(a)  # (B, T, C)
        x = x + self.mlp(self.ln2(x))  # (B, T, C)
        return x, weights


class Transformer(nn.Module):
    """Token ids (B, T) -> logits (B, T, vocab_size).

    ``forward(idx, mask=None, key_padding=None, return_attention=False, caches=None)``:
    ``mask`` (bool, broadcastable to (B, H, T, T), True = may attend) replaces the default mask
    (causal for ``config.causal``, none otherwise) - the objectives chapter uses it for prefix LM;
    ``key_padding`` (B, T) bool, True at real tokens, hides padded keys. ``hidden(idx, ...)`` gives
    the final normalized hidden states (B, T, d_model) that task heads read.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model) if c.pos == "learned" else None
        if c.pos == "sinusoidal":
            # rows of norm 1/2, the order of the N(0, init_std) token embeddings (see its docs)
            self.register_buffer("pos_table", sinusoidal_positions(c.block_size, c.d_model,
                                                                   1 / math.sqrt(2 * c.d_model)),
                                 persistent=False)
        rope = RotaryEmbedding(c.head_dim, c.block_size) if c.pos == "rope" else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c, rope) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model, bias=c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight  # one (V, C) matrix, used twice
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialization: N(0, init_std) weights, zero biases, LayerNorm at (1, 0), and
        the residual projections (attn.proj, mlp.proj) at init_std / sqrt(2 * n_layer)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.config.scale_residual_init:
            for block in self.blocks:
                for proj in (block.attn.proj, block.mlp.proj):
                    scaled = std / math.sqrt(2 * self.config.n_layer)
                    nn.init.normal_(proj.weight, mean=0.0, std=scaled)

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weights counted once); without position embeddings by default."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.pos_emb is not None:
            n -= self.pos_emb.weight.numel()
        return n

    def _embed(self, idx: torch.Tensor, start: int) -> torch.Tensor:
        b, t = idx.shape
        if start + t > self.config.block_size:
            raise ValueError(
                f"sequence of length {start + t} is longer than "
                f"block_size={self.config.block_size}; "
                "crop the input to the last block_size tokens."
            )
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + t, device=idx.device))  # + (T, C)
        elif self.config.pos == "sinusoidal":
            x = x + self.pos_table[start : start + t].to(x.dtype)
        return self.drop(x)

    def hidden(self, idx, mask=None, key_padding=None, *, return_attention=False, caches=None):
        """(B, T) ids -> final-LayerNormed hidden states (B, T, C)
        [, attention weights per layer]."""
        start = 0 if not caches or "k" not in caches[0] else caches[0]["k"].size(2)
        x = self._embed(idx, start)
        is_causal = self.config.causal and mask is None
        if key_padding is not None:
            pad = key_padding[:, None, None, :].bool()  # (B, 1, 1, T)
            mask = pad if mask is None else mask & pad
        attentions = []
        for i, block in enumerate(self.blocks):
            cache = caches[i] if caches is not None else None
            x, weights = block(x, mask, is_causal=is_causal, cache=cache,
                               return_weights=return_attention)
            attentions.append(weights)
        x = self.ln_f(x)  # (B, T, C)
        return (x, attentions) if return_attention else x

    def forward(self, idx, mask=None, key_padding=None, *, return_attention=False, caches=None):
        out = self.hidden(idx, mask, key_padding, return_attention=return_attention, caches=caches)
        h, attentions = out if return_attention else (out, None)
        logits = self.lm_head(h)  # (B, T, V)
        return (logits, attentions) if return_attention else logits
