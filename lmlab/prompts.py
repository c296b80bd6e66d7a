"""Prompts as inputs: a hard prompt (text) and soft prompt tuning (trainable vectors).

A causal model reads a sequence of input vectors e_1 .. e_T (token embeddings plus positions). A
**hard prompt** is text put in front of the input, P = (p_1 .. p_k) token ids: its vectors are
rows of the token embedding, tok_emb[p_i]. A **soft prompt** (Lester et al., 2021) drops the
constraint that the k vectors be rows of the embedding: they are k free vectors in R^d_model,
trained by gradient descent on the task's loss while every weight of the model stays frozen:

    h = model.blocks([s_1 .. s_k, tok_emb[x_1] .. tok_emb[x_T]] + pos[0 .. k + T - 1])
    loss = CE(lm_head(h[k:]), targets)          (only the text positions are scored)

Only k * d_model numbers train. Initialized to the embeddings of a hard prompt, a soft prompt
computes exactly what the hard prompt computes, and training can only move it from there.
Prefix tuning (Li & Liang, 2021) goes one step further and learns vectors at every layer's keys
and values; the soft prompt here acts at the input only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import Transformer

IGNORE = -100
"""Target id of a position that is not scored (padding, the first character of a piece)."""


def prompted_logits(model: Transformer, idx: torch.Tensor,
                    prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, T, V) of the text positions of ids (B, T) read after ``prompt`` (k, C) input
    vectors (None or k = 0: no prompt, exactly ``model(idx)``). Position embeddings count from
    the first prompt vector, as they would for a hard prompt written in front of the text."""
    if prompt is None or prompt.size(0) == 0:
        return model(idx)
    k, t = prompt.size(0), idx.size(1)
    if prompt.dim() != 2 or prompt.size(1) != model.config.d_model:
        raise ValueError(f"prompt has shape {tuple(prompt.shape)}: expected (k, "
                         f"{model.config.d_model}) vectors.")
    if k + t > model.config.block_size:
        raise ValueError(f"a prompt of {k} vectors + {t} tokens is longer than block_size="
                         f"{model.config.block_size}: shorten the text or the prompt.")
    tokens = model.tok_emb(idx)  # (B, T, C)
    x = torch.cat([prompt.to(tokens.dtype).expand(idx.size(0), -1, -1), tokens], dim=1)
    if model.pos_emb is not None:  # (B, k + T, C)
        x = x + model.pos_emb(torch.arange(k + t, device=idx.device))
    elif model.config.pos == "sinusoidal":
        x = x + model.pos_table[: k + t].to(x.dtype)
    x = model.drop(x)
    for block in model.blocks:
        x, _ = block(x, None, is_causal=model.config.causal)
    return model.lm_head(model.ln_f(x[:, k:]))  # (B, T, V)


def prompt_loss(model: Transformer, x: torch.Tensor, y: torch.Tensor,
                prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the scored targets y (B, T) (``IGNORE`` elsewhere) of the text
    x (B, T) read after ``prompt``."""
    logits = prompted_logits(model, x, prompt)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE)


def hard_prompt_vectors(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """The input vectors (k, C) of a hard prompt: rows tok_emb[ids] (no gradient)."""
    with torch.no_grad():
        return model.tok_emb(ids.to(model.tok_emb.weight.device)).detach().clone()


class SoftPrompt(nn.Module):
    """k trainable input vectors (k, C), initialized to the embeddings of ``init_ids`` (k ids: a
    hard prompt, or vocabulary tokens, which Lester et al. 2021 found better than random)."""

    def __init__(self, model: Transformer, init_ids: torch.Tensor):
        super().__init__()
        if init_ids.dim() != 1:
            raise ValueError(f"init_ids must be 1-D token ids, got shape {tuple(init_ids.shape)}.")
        self.vectors = nn.Parameter(hard_prompt_vectors(model, init_ids))  # (k, C)

    @property
    def length(self) -> int:
        return self.vectors.size(0)

    def forward(self) -> torch.Tensor:
        return self.vectors


def init_ids_for(hard_ids: torch.Tensor, k: int) -> torch.Tensor:
    """k ids to start a soft prompt from: the last k of the hard prompt repeated on the left
    (k = len(hard_ids) gives the hard prompt itself; k = 0 gives no prompt)."""
    if k < 0:
        raise ValueError(f"prompt length k={k} is invalid: expected k >= 0.")
    if k == 0:
        return hard_ids[:0]
    if len(hard_ids) == 0:
        raise ValueError("the hard prompt is empty: give at least one token to start from.")
    reps = -(-k // len(hard_ids))  # ceil
    return hard_ids.repeat(reps)[-k:]
