"""A minimal single-file GPT training loop in plain PyTorch: the baseline lmlab is timed against.

It follows the common recipe of the small GPT implementations (pre-LayerNorm blocks, GELU MLP,
learned positions, tied embeddings, no biases, AdamW with decay on matrices, warmup + cosine,
gradient clipping) with batches gathered on the host each step, and nothing else: no history,
checkpoints or safety nets. It is written here from the architecture's definition, so that both
sides of the comparison run on the same machine, in the same process, on the same data.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.h = h
        self.ln1 = nn.LayerNorm(d, bias=False)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(b, t, d))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, d: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                residual = name.endswith(("out.weight", "proj.weight"))
                std = 0.02 / math.sqrt(2 * n_layer) if residual else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        t = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def train_minimal(train_ids: torch.Tensor, vocab: int, *, n_layer=4, n_head=4, d=128, block=64,
                  batch=12, steps=2000, lr=1e-3, min_lr=1e-4, warmup=100, seed=0):
    """Returns (model, seconds spent in the loop)."""
    torch.manual_seed(seed)
    model = GPT(vocab, block, n_layer, n_head, d)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for it in range(steps):
        if it < warmup:
            cur = lr * (it + 1) / (warmup + 1)
        else:
            ratio = (it - warmup) / (steps - warmup)
            cur = min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)
        for g in opt.param_groups:
            g["lr"] = cur
        ix = torch.randint(len(train_ids) - block - 1, (batch,), generator=gen)
        x = torch.stack([train_ids[i : i + block] for i in ix])
        y = torch.stack([train_ids[i + 1 : i + 1 + block] for i in ix])
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model, time.perf_counter() - start
