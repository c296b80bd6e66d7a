"""Chapter 1 explorer: read a trained model's attention maps, layer by layer and head by head.

The weights come from :func:`lmlab.attention.attention_maps` (computed once per text and kept);
the map is drawn by :func:`lmlab.plots.attention_map` into the explorer's one persistent figure.
"""

from __future__ import annotations

import ipywidgets as W
import torch
from torch import nn

from ..attention import attention_maps
from ..plots import attention_map
from . import Explorer, History

MEAN = "mean over heads"


def attention_explorer(model: nn.Module, tokenizer, text: str, *, layer: int = 1,
                       head: int | str = 1, max_chars: int = 48) -> Explorer:
    """An :class:`Explorer` with controls ``layer`` (1..L), ``head`` (1..H or ``MEAN``) and
    ``text``; it draws the (T, T) attention weights of that head on the text's characters, and
    beside it the map of the reference setting (the defaults), both on one fixed colour scale
    [0, 1] (a weight is a probability), so that two heads compare by looking.

    Texts longer than ``max_chars`` (or the model's block_size) keep their first characters only.
    """
    n_layer, n_head = model.config.n_layer, model.config.n_head
    limit = min(max_chars, model.config.block_size)
    if not 1 <= layer <= n_layer:
        raise ValueError(f"layer={layer} is invalid: expected 1..{n_layer}.")
    if head != MEAN and not (isinstance(head, int) and 1 <= head <= n_head):
        raise ValueError(f"head={head!r} is invalid: expected 1..{n_head} or {MEAN!r}.")
    device = next(model.parameters()).device
    maps: dict[str, torch.Tensor] = {}

    def weights_for(line: str) -> torch.Tensor:
        if line not in maps:
            ids = torch.tensor(tokenizer.encode(line), dtype=torch.long, device=device)  # (T,)
            maps[line] = attention_maps(model, ids).cpu()  # (L, H, T, T)
        return maps[line]

    history = History(keep=0)

    def draw(figure, progress, layer: int, head, text: str) -> None:
        line = text[:limit]
        if not line:
            raise ValueError("type at least one character of text.")
        w = weights_for(line)[layer - 1]  # (H, T, T)
        w = w.mean(0) if head == MEAN else w[head - 1]  # (T, T)
        who = "mean over heads" if head == MEAN else f"head {head}"
        cropped = f" (first {limit} characters)" if len(text) > limit else ""
        key = (layer, head, line)
        history.record(key, f"layer {layer}, {who}", (w, line))
        behind = history.behind(key)
        axes = figure.subplots(1, 1 + len(behind), squeeze=False)[0]
        attention_map(axes[0], w, list(line), title=f"layer {layer}, {who}{cropped}")
        for ax, (trace, _style, label) in zip(axes[1:], behind, strict=True):
            ref_w, ref_line = trace.data
            attention_map(ax, ref_w, list(ref_line), title=label)
        for ax in axes:
            ax.images[0].set_clim(0.0, 1.0)

    controls = {
        "layer": W.IntSlider(value=layer, min=1, max=n_layer, description="layer",
                             continuous_update=False),
        "head": W.Dropdown(options=[*range(1, n_head + 1), MEAN], value=head, description="head"),
        "text": W.Text(value=text, description="text", continuous_update=False,
                       layout=W.Layout(width="420px")),
    }
    title = ("Attention weights of a trained model: row = query (the character predicting the "
             "next), column = key it reads")
    return Explorer(controls, draw, title=title, figsize=(9.0, 5.0), history=history)
