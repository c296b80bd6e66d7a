"""What is read off a run's history: one implementation for a live :class:`lmlab.train.Run` and a
cached :class:`lmlab.experiments.Result` alike.

A history is a list of plain dict rows, one per step (``step, tokens, lr, train_loss, grad_norm,
seconds``), with ``val_loss`` and ``eval_train_loss`` added at evaluation steps. Other histories
(fine-tuning's, the policy gradient's) are lists of rows too: :func:`rows_with` and
:func:`column` read any of them, and every plot, explorer and record reads rows through them.
"""

from __future__ import annotations

from collections.abc import Iterable


def rows_with(rows: Iterable[dict], *keys: str) -> list[dict]:
    """The rows in which every one of ``keys`` has a value (present and not None), in order."""
    return [r for r in rows if all(r.get(k) is not None for k in keys)]


def column(rows: Iterable[dict], key: str, x: str = "step") -> tuple[list, list]:
    """(xs, ys) = ([r[x] for r in kept], [r[key] for r in kept]), kept = :func:`rows_with`
    (rows, key): ``key`` against ``x`` wherever it was recorded, ready to plot."""
    kept = rows_with(rows, key)
    return [r[x] for r in kept], [r[key] for r in kept]


class RunHistory:
    """Mixin for anything with a ``history`` list of rows."""

    history: list[dict]

    @property
    def evals(self) -> list[dict]:
        """The rows that carry a validation loss."""
        return rows_with(self.history, "val_loss")

    def column(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) for the rows that have ``key``: ready to plot (:func:`column`)."""
        return column(self.history, key)

    @property
    def final_val_loss(self) -> float | None:
        """The last validation loss; None for a run stopped before its first evaluation."""
        evals = self.evals
        return evals[-1]["val_loss"] if evals else None

    @property
    def best_val_loss(self) -> float | None:
        """The lowest validation loss; None for a run stopped before its first evaluation."""
        evals = self.evals
        return min(r["val_loss"] for r in evals) if evals else None
