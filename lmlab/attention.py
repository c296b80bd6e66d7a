"""Attention, written out: scaled dot-product attention, masks, multi-head attention, positions.

Scaled dot-product attention (Vaswani et al., 2017) for queries Q (T_q, d_k), keys K (T_k, d_k)
and values V (T_k, d_v):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V

where the mask M is 0 where a query may attend and -inf where it may not. Masks in lmlab are
boolean tensors broadcastable to (B, H, T_q, T_k) with **True = may attend**, the convention of
``torch.nn.functional.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .modes import eval_mode


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: torch.Tensor | None) -> None:
    """Raise a ValueError unless q (..., T_q, d_k), k (..., T_k, d_k), v (..., T_k, d_v) fit and
    ``mask`` is None or a bool tensor broadcastable to (..., T_q, T_k). Both backends call it, so
    a bad mask fails alike whichever one runs."""
    if q.size(-1) != k.size(-1) or k.size(-2) != v.size(-2):
        raise ValueError(
            f"shapes do not fit: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; "
            "q and k need the same last dim d_k, and k and v the same number of positions T_k."
        )
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = may attend), got {mask.dtype}; "
                         "convert with mask.bool().")
    scores_shape = (*torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]), q.size(-2), k.size(-2))
    try:
        fits = torch.broadcast_shapes(mask.shape, scores_shape) == torch.Size(scores_shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' "
                         f"shape {scores_shape} (..., T_q, T_k).")


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale + M) v, from scratch; returns ``(out, weights)``.

    q: (..., T_q, d_k), k: (..., T_k, d_k), v: (..., T_k, d_v); mask: bool, broadcastable to
    (..., T_q, T_k), True = may attend. ``scale`` defaults to 1 / sqrt(d_k).
    Returns out (..., T_q, d_v) and the attention weights (..., T_q, T_k) (before dropout).
    A query whose row of the mask is all False (it may attend to nothing: an all-padding row)
    gets weights 0 and output 0, as PyTorch's fused kernel gives, where softmax over a row of
    -inf alone would give 0/0 = NaN.
    """
    check_attention_inputs(q, k, v, mask)
    d_k = q.size(-1)
    scale = 1.0 / math.sqrt(d_k) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (..., T_q, T_k), rows sum to 1
    if mask is not None:  # fully masked rows: NaN -> 0 (masked_fill's backward zeroes their grad)
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    attended = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return attended @ v, weights  # (..., T_q, d_v), (..., T_q, T_k)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None = None, dropout_p: float = 0.0, *,
                    is_causal: bool = False) -> torch.Tensor:
    """The same attention by ``torch.nn.functional.scaled_dot_product_attention`` (a fused
    kernel: FlashAttention on recent GPUs when there is no mask), after the same input checks as
    :func:`scaled_dot_product_attention`. ``is_causal`` (only with ``mask=None``) applies the
    causal mask inside the kernel, without building it. Returns (..., T_q, d_v)."""
    check_attention_inputs(q, k, v, mask)
    if is_causal and mask is not None:
        raise ValueError("pass either mask or is_causal=True, not both: fold the causal mask "
                         "into mask (mask & causal_mask(T_q, T_k)).")
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=is_causal)


def softmax_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of attention weights, in nats: H(p) = -sum_j p_j log p_j (0 log 0 = 0).

    weights: (..., T_k), rows summing to 1 -> (...,). Uniform over n keys gives log n; one-hot, 0.
    """
    logs = torch.where(weights > 0, weights.log(), torch.zeros_like(weights))
    return -(weights * logs).sum(-1)


def key_only_attention(x: torch.Tensor, w_key: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The form some write-ups give for attention, which is *not* scaled dot-product attention:

        a_ij = exp(w^T K x_j) / sum_k exp(w^T K x_k)

    with one learned vector w in place of a query. x: (T, d_in), w_key: (d_k, d_in), w: (d_k,)
    -> weights (T, T). No term depends on x_i, so every query gets the same row of weights.
    """
    scores = (x @ w_key.T) @ w  # (T,): one score per key, w^T K x_j
    return torch.softmax(scores, dim=-1).expand(x.size(0), -1)  # (T, T), all rows equal


@torch.no_grad()
def score_scale_statistics(d_k: int, scaled: bool, n_queries: int = 512, n_keys: int = 64,
                           seed: int = 0) -> dict[str, float]:
    """What 1/sqrt(d_k) does, measured on random q, k with i.i.d. N(0, 1) entries (each of the
    ``n_queries`` queries gets its own ``n_keys`` keys, so the rows are independent).

    s_ij = q_i . k_j * c with c = 1/sqrt(d_k) (``scaled``) or 1. Var(q . k) = d_k, so Var(s) is
    1 with the scale and d_k without. Returns the measured ``score_var``, the mean softmax
    entropy of a row (nats; log(n_keys) is uniform), the mean largest weight ``max_weight`` and
    ``grad_norm``: the mean over rows of ||dL/ds_i|| for L = sum_j g_ij p_ij with g ~ N(0, 1),
    i.e. ||J_softmax(s_i)^T g_i|| with J = diag(p) - p p^T: the signal softmax passes back.
    """
    if d_k < 1 or n_queries < 1 or n_keys < 2:
        raise ValueError(f"need d_k >= 1, n_queries >= 1 and n_keys >= 2; got {d_k}, "
                         f"{n_queries}, {n_keys}.")
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n_queries, 1, d_k, generator=gen)  # (Q, 1, d_k)
    k = torch.randn(n_queries, n_keys, d_k, generator=gen)  # (Q, K, d_k): fresh keys per query
    g = torch.randn(n_queries, n_keys, generator=gen)  # (Q, K) upstream gradient
    scores = (q * k).sum(-1) * (1 / math.sqrt(d_k) if scaled else 1.0)  # (Q, K)
    p = torch.softmax(scores.double(), dim=-1)  # (Q, K); float64: measure saturation, not rounding
    grad = p * (g - (p * g).sum(-1, keepdim=True))  # (Q, K): (diag(p) - p p^T) g per row
    return {"d_k": d_k, "scaled": scaled, "score_var": float(scores.var()),
            "entropy": float(softmax_entropy(p).mean()),
            "max_weight": float(p.max(-1).values.mean()),
            "grad_norm": float(grad.norm(dim=-1).mean())}


@torch.no_grad()
def attention_maps(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Every layer's and head's attention weights for one sequence: (T,) or (1, T) ids ->
    (L, H, T, T), read from ``model(idx, return_attention=True)`` in eval mode."""
    idx = idx[None] if idx.dim() == 1 else idx
    if idx.dim() != 2 or idx.size(0) != 1:
        raise ValueError(f"attention_maps takes one sequence, (T,) or (1, T); "
                         f"got {tuple(idx.shape)}.")
    with eval_mode(model):
        _, weights = model(idx, return_attention=True)  # L x (1, H, T, T)
    return torch.stack([w[0] for w in weights])  # (L, H, T, T)


def causal_mask(t_q: int, t_k: int | None = None, device=None) -> torch.Tensor:
    """(T_q, T_k) bool, True on and below the diagonal: query i sees keys j <= i + (T_k - T_q).

    With ``T_k > T_q`` (queries are the last T_q positions, as with a KV cache) the diagonal is
    shifted so that each query still sees itself and everything before it.
    """
    t_k = t_q if t_k is None else t_k
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


def padding_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, 1, 1, T) bool, False at padded key positions: no query attends to padding."""
    return (ids != pad_id)[:, None, None, :]


def sinusoidal_positions(n_positions: int, d_model: int, scale: float = 1.0) -> torch.Tensor:
    """(T, d) table: PE[p, 2i] = scale * sin(p / 10000^(2i/d)), PE[p, 2i+1] = scale * cos(...same).

    With ``scale=1`` (Vaswani et al. 2017) each row has norm sqrt(d/2) (sin^2 + cos^2 = 1 per
    pair). lmlab's Transformer uses ``scale = 1 / sqrt(2 d)``, rows of norm 1/2: the same order as
    its N(0, 0.02) token embeddings (rows of norm 0.02 sqrt(d)), where an unscaled table,
    sqrt(d/2) / (0.02 sqrt(d)) = sqrt(1/2) / 0.02 = 35.4 times larger, would drown the token
    identities.
    """
    if n_positions < 1 or d_model < 1:
        raise ValueError(f"n_positions={n_positions} and d_model={d_model} must both be >= 1.")
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (T, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32)  # (ceil(d/2),)
    angle = position / torch.pow(10000.0, two_i / d_model)  # (T, ceil(d/2))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return table * scale


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021), rotate-half convention.

    Each pair of dims (x_i, x_{i+d/2}) of a query or key at position p is rotated by the angle
    p * theta_i with theta_i = base^(-2i/d): relative position then appears in q . k as a phase
    difference, and no position vector is added to the residual stream.
    """

    def __init__(self, head_dim: int, max_positions: int, base: float = 10000.0):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq  # (T, d/2)
        angles = torch.cat([angles, angles], dim=-1)  # (T, d)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x: (B, H, T, d) -> same shape, rotated for positions start .. start+T-1."""
        t = x.size(-2)
        if start + t > self.cos.size(0):
            raise ValueError(f"positions up to {start + t} exceed RoPE's table of "
                             f"{self.cos.size(0)}: build it with a larger max_positions.")
        cos = self.cos[start : start + t].to(x.dtype)  # (T, d)
        sin = self.sin[start : start + t].to(x.dtype)
        return x * cos + self._rotate_half(x) * sin


class MultiHeadAttention(nn.Module):
    """Multi-head attention as reshapes: project, split d_model into H heads of d_k = d_model / H,
    attend in each head independently, concatenate, project back.

    ``d_in`` (input width) may differ from ``d_model``; the output has width ``d_model``.
    ``backend``: ``naive`` (explicit softmax, can return weights) or ``sdpa`` (PyTorch's fused
    kernel). ``rope``: an optional :class:`RotaryEmbedding` applied to q and k.
    """

    def __init__(self, d_model: int, n_head: int, *, d_in: int | None = None, dropout: float = 0.0,
                 bias: bool = True, backend: str = "sdpa", rope: RotaryEmbedding | None = None):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} must be divisible by n_head={n_head}.")
        if backend not in ("naive", "sdpa"):
            raise ValueError(f"backend={backend!r} is invalid: expected 'naive' or 'sdpa'.")
        d_in = d_model if d_in is None else d_in
        self.n_head, self.d_model, self.head_dim = n_head, d_model, d_model // n_head
        self.qkv = nn.Linear(d_in, 3 * d_model, bias=bias)  # W_Q, W_K, W_V stacked
        self.proj = nn.Linear(d_model, d_model, bias=bias)  # W_O
        self.dropout = dropout
        self.backend = backend
        self.rope = rope

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, d_k)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, is_causal: bool = False,
                cache: dict | None = None, return_weights: bool = False):
        """x: (B, T, d_in). ``mask``: bool, broadcastable to (B, H, T, T_k), True = may attend.
        ``is_causal``: add the causal mask. ``cache``: a dict holding this layer's past keys and
        values ({'k': (B, H, T_past, d_k), 'v': ...}), extended in place (for generation).
        Returns (B, T, d_model), or (out, weights (B, H, T, T_k)) with ``return_weights``.

        out = concat_h(head_h) W_O^T + b_O, where head_h = softmax(q_h k_h^T / sqrt(d_k) + M) v_h.
        """
        b, t, _ = x.shape
        heads, weights = self.heads(x, mask, is_causal=is_causal, cache=cache,
                                    return_weights=return_weights)  # (B, H, T, d_k)
        out = heads.transpose(1, 2).reshape(b, t, self.d_model)  # (B, T, d_model): concatenated
        out = self.proj(out)
        return (out, weights) if return_weights else out

    def heads(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, is_causal: bool = False,
              cache: dict | None = None, return_weights: bool = False):
        """The per-head outputs before concatenation and W_O: (B, H, T, d_k), and the weights
        (B, H, T, T_k) or None. Same arguments as :meth:`forward`."""
        if x.dim() != 3 or x.size(-1) != self.qkv.in_features:
            raise ValueError(f"expected x of shape (B, T, d_in={self.qkv.in_features}); got "
                             f"{tuple(x.shape)}. Pass d_in= when the input width differs from "
                             "d_model.")
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(self.d_model, dim=-1)  # 3 x (B, T, d_model)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)  # (B, H, T, d_k)
        past = 0 if cache is None or "k" not in cache else cache["k"].size(2)
        if self.rope is not None:
            q, k = self.rope(q, start=past), self.rope(k, start=past)
        if cache is not None:
            if past:
                k = torch.cat([cache["k"], k], dim=2)  # (B, H, T_past + T, d_k)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        t_k = k.size(2)
        # One query at the end of the keys (KV-cache decoding) may see every key: its causal mask
        # is all True, so none is needed, and none keeps the fused kernel's fastest path open.
        causal = is_causal and t > 1
        naive = self.backend == "naive" or return_weights
        if causal and (naive or mask is not None or t != t_k):  # the kernel cannot do these
            causal_keys = causal_mask(t, t_k, device=x.device)  # (T, T_k)
            mask = causal_keys if mask is None else mask & causal_keys
            causal = False
        dropout_p = self.dropout if self.training else 0.0
        if naive:
            out, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p)
        else:  # with no mask and T == T_k, causal masking happens inside the kernel
            out, weights = fused_attention(q, k, v, mask, dropout_p, is_causal=causal), None
        return out, weights  # (B, H, T, d_k), (B, H, T, T_k) or None
