"""Reading a history: one reader of rows (``lmlab.history.column`` / ``rows_with``) behind a Run,
a cached Result, fine-tuning's AdaptResult, the plots and the explorers."""

from __future__ import annotations

from lmlab.finetune import AdaptConfig, AdaptResult
from lmlab.history import RunHistory, column, rows_with
from lmlab.regularization import generalization_gap

ROWS = [
    {"step": 1, "tokens": 64, "train_loss": 3.0},
    {"step": 2, "tokens": 128, "train_loss": 2.5, "val_loss": 2.75, "eval_train_loss": 2.5},
    {"step": 3, "tokens": 192, "train_loss": 2.0, "val_loss": None},
    {"step": 4, "tokens": 256, "train_loss": 1.5, "val_loss": 2.25, "eval_train_loss": 1.75},
]


def test_column_reads_a_key_where_it_was_recorded_against_any_x():
    assert column(ROWS, "val_loss") == ([2, 4], [2.75, 2.25])  # missing and None skipped
    assert column(ROWS, "val_loss", x="tokens") == ([128, 256], [2.75, 2.25])
    assert column(ROWS, "train_loss") == ([1, 2, 3, 4], [3.0, 2.5, 2.0, 1.5])
    assert column(ROWS, "reward") == ([], [])
    assert column(iter(ROWS), "val_loss") == ([2, 4], [2.75, 2.25])  # any iterable of rows
    assert rows_with(ROWS, "val_loss", "eval_train_loss") == [ROWS[1], ROWS[3]]
    assert rows_with(ROWS) == ROWS


def test_every_history_reads_through_the_one_reader():
    run = RunHistory()
    run.history = ROWS
    assert run.column("val_loss") == column(ROWS, "val_loss")
    assert run.evals == [ROWS[1], ROWS[3]]
    assert (run.final_val_loss, run.best_val_loss) == (2.25, 2.25)
    assert generalization_gap(run) == ([2, 4], [0.25, 0.5])
    adapted = [{"step": 0, "speaker_loss": 3.0, "general_loss": 2.0},
               {"step": 5, "speaker_loss": 2.0, "general_loss": 2.5}]
    result = AdaptResult(AdaptConfig(), adapted, trainable=10)
    assert result.column("speaker_loss") == ([0, 5], [3.0, 2.0])
    assert result.column("general_loss") == column(adapted, "general_loss")
