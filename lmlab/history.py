"""What is read off a run's history: one implementation for a live :class:`lmlab.train.Run` and a
cached :class:`lmlab.experiments.Result` alike.

A history is a list of plain dict rows, one per step (``step, tokens, lr, train_loss, grad_norm,
seconds``), with ``val_loss`` and ``eval_train_loss`` added at evaluation steps.
"""

from __future__ import annotations


class RunHistory:
    """Mixin for anything with a ``history`` list of rows."""

    history: list[dict]

    @property
    def evals(self) -> list[dict]:
        """The rows that carry a validation loss."""
        return [r for r in self.history if r.get("val_loss") is not None]

    def column(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) for the rows that have ``key``: ready to plot."""
        rows = [r for r in self.history if r.get(key) is not None]
        return [r["step"] for r in rows], [r[key] for r in rows]

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
