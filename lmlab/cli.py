"""The command line: train a model and sample from it, outside the notebooks.

    python -m lmlab train --config run.toml --steps 2000          # one process (GPU if present)
    torchrun --standalone --nproc_per_node 4 -m lmlab train ...   # the same run on 4 GPUs
    python -m lmlab train --resume                                # continue the newest checkpoint
    python -m lmlab sample checkpoints/step_2000.pt --prompt "ROMEO:" --max-new-tokens 300

Every ``ModelConfig`` and ``TrainConfig`` field is a flag (``--n-layer 6``, ``--lr 3e-4``,
``--no-progress``) and a key of the optional ``--config`` file (TOML or JSON, one flat table);
values are layered: the configs' defaults < a resumed checkpoint's configs < the file < flags.
The configs validate what they are given, so a bad key or value ends with their message on
stderr and exit status 2. Training is :func:`lmlab.train`; under torchrun it joins the process
group (:mod:`lmlab.distributed`) and runs data-parallel, with rank 0 printing and writing.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .checkpoint import latest_checkpoint, load_checkpoint, load_model
from .config import (
    ATTENTION_BACKENDS,
    DTYPES,
    OPTIMIZERS,
    POSITIONAL_SCHEMES,
    SCHEDULES,
    ModelConfig,
    TrainConfig,
)
from .data import Corpus, char_corpus, text_corpus
from .device import pick_device
from .distributed import DDP_OBJECTIVES, from_environment, shutdown
from .generate import generate
from .model import Transformer
from .paths import atomic_write
from .train import TrainingDiverged, train

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: JSON config files only
    tomllib = None

DEFAULT_CHECKPOINT_DIR = "checkpoints"
HISTORY_NAME = "history.jsonl"
CORPUS_NAME = "corpus.json"
"""Written next to the checkpoints: the text they were trained on, so `--resume` finds it."""
CONFIG_CLASSES = (ModelConfig, TrainConfig)
FIELDS: dict[str, tuple[type, dataclasses.Field]] = {
    f.name: (cls, f) for cls in CONFIG_CLASSES for f in dataclasses.fields(cls)
}
"""Every config field by name (the two configs share no field name), with the class it is in."""
CHOICES = {"pos": POSITIONAL_SCHEMES, "attention": ATTENTION_BACKENDS, "optimizer": OPTIMIZERS,
           "schedule": SCHEDULES, "dtype": DTYPES, "objective": DDP_OBJECTIVES}


class CommandLineError(Exception):
    """A mistake in what was asked for: printed as ``error: ...`` with exit status 2."""


# ----------------------------------------------------------------------------- parsing values


def _bare_type(field: dataclasses.Field) -> str:
    return str(field.type).replace(" | None", "")


def _is_bool(field: dataclasses.Field) -> bool:
    return _bare_type(field) == "bool"


def parse_flag_value(name: str, text: str) -> Any:
    """A flag's text as the field's type: ``int``, ``float``, ``none`` for optional fields, a
    comma-separated pair for ``betas``. Text that does not convert is passed on unchanged, so the
    config rejects it with its own message (``TrainConfig.steps='1e3' is invalid: ...``)."""
    _, field = FIELDS[name]
    kind = _bare_type(field)
    if "None" in str(field.type) and text.strip().lower() in ("none", "null"):
        return None
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind.startswith("tuple"):
            return tuple(float(v) for v in text.split(","))
    except ValueError:
        return text
    return text


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The keys of a TOML or JSON config file (one flat table of config fields)."""
    path = Path(path)
    if not path.is_file():
        raise CommandLineError(f"--config {path}: no such file.")
    try:
        if path.suffix == ".toml" and tomllib is None:
            raise CommandLineError(f"--config {path}: TOML needs Python 3.11 or later; "
                                   "write the same keys as a .json file.")
        if path.suffix == ".toml":
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".json":
            values = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise CommandLineError(f"--config {path}: expected a .toml or .json file, "
                                   f"not {path.suffix or 'one without a suffix'}.")
    except ValueError as err:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise CommandLineError(
            f"--config {path} is not valid {path.suffix[1:].upper()}: {err}") from err
    if not isinstance(values, dict):
        raise CommandLineError(f"--config {path}: expected a table of config fields at the top.")
    for key in values:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, list(FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CommandLineError(
                f"unknown key {key!r} in {path}{hint}: expected a field of ModelConfig "
                f"({', '.join(f.name for f in dataclasses.fields(ModelConfig))}) or TrainConfig "
                f"({', '.join(f.name for f in dataclasses.fields(TrainConfig))}).")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _check_bools(values: dict[str, Any]) -> None:
    for name, value in values.items():
        cls, field = FIELDS[name]
        if _is_bool(field) and not isinstance(value, bool):
            raise CommandLineError(
                f"{cls.__name__}.{name}={value!r} is invalid: expected true or false.")


def build_configs(file_values: dict[str, Any], flag_values: dict[str, Any], vocab_size: int,
                  stored: dict | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Layer the values (defaults < ``stored`` checkpoint configs < file < flags) and construct
    the two configs, which validate them. ``vocab_size`` (the corpus's) is the default of
    ``ModelConfig.vocab_size``. A resumed run keeps its checkpoint's model: asking for another
    model shape is an error."""
    asked = {**file_values, **flag_values}
    _check_bools(asked)
    values: dict[str, Any] = {"checkpoint_dir": DEFAULT_CHECKPOINT_DIR, "vocab_size": vocab_size}
    if stored is not None:
        model_stored = stored["model_config"]
        changed = {k: v for k, v in asked.items()
                   if k in model_stored and model_stored[k] != v}
        if changed:
            name, value = next(iter(changed.items()))
            raise CommandLineError(
                f"ModelConfig.{name}={value!r} differs from the checkpoint's "
                f"{name}={model_stored[name]!r}: a resumed run keeps the checkpoint's model "
                "(drop that setting, or start a new run in another --checkpoint-dir).")
        values.update(model_stored)
        values.update({k: tuple(v) if isinstance(v, list) else v
                       for k, v in stored["train_config"].items()})
    values.update(asked)
    try:
        configs = tuple(
            cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})
            for cls in CONFIG_CLASSES)
    except ValueError as err:
        raise CommandLineError(str(err)) from err
    model_config, train_config = configs
    if model_config.vocab_size < vocab_size:
        raise CommandLineError(
            f"ModelConfig.vocab_size={model_config.vocab_size} is invalid: expected at least "
            f"the corpus's {vocab_size} tokens (leave it out to use exactly those).")
    if not train_config.checkpoint_dir:
        raise CommandLineError(
            f"TrainConfig.checkpoint_dir={train_config.checkpoint_dir!r} is invalid: expected a "
            "folder path, since the command line writes its checkpoints and history there.")
    if train_config.objective not in DDP_OBJECTIVES:
        raise CommandLineError(
            f"TrainConfig.objective={train_config.objective!r} is not available from the command "
            f"line: expected one of {', '.join(repr(o) for o in DDP_OBJECTIVES)} (the pair "
            "objectives need a model with a pair head: see lmlab.heads in a notebook).")
    return model_config, train_config


# ----------------------------------------------------------------------------- the parser


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for cls in CONFIG_CLASSES:
        group = parser.add_argument_group(
            f"{cls.__name__} fields", "Any of these can also be a key of the --config file.")
        for field in dataclasses.fields(cls):
            flag = "--" + field.name.replace("_", "-")
            default = field.default
            if field.name == "vocab_size":
                shown = "the corpus's vocabulary"
            elif field.name == "checkpoint_dir":
                shown = DEFAULT_CHECKPOINT_DIR
            else:
                shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            help_text = f"{cls.__name__}.{field.name} (default: {shown})"
            if field.name in CHOICES:
                help_text += "; one of " + ", ".join(CHOICES[field.name])
            if _is_bool(field):
                parser_action = argparse.BooleanOptionalAction
                group.add_argument(flag, dest=field.name, action=parser_action,
                                   default=argparse.SUPPRESS, help=help_text)
            else:
                group.add_argument(flag, dest=field.name, default=argparse.SUPPRESS,
                                   metavar="B1,B2" if field.name == "betas"
                                   else _bare_type(field).upper(),
                                   help=help_text)


def build_parser(prog: str = "lmlab") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Train a character-level Transformer and sample from it.")
    commands = parser.add_subparsers(dest="command", required=True)

    tr = commands.add_parser(
        "train", help="train a model (runs data-parallel under torchrun)",
        description="Train a Transformer on Tiny Shakespeare (or --text FILE). Checkpoints, "
                    f"and the history as JSON lines ({HISTORY_NAME}), go to --checkpoint-dir. "
                    "Under torchrun, batch_size is the global batch, split evenly across the "
                    "processes.")
    tr.add_argument("--config", metavar="FILE",
                    help="a .toml or .json file whose keys are ModelConfig/TrainConfig fields "
                         "(flags override it)")
    tr.add_argument("--text", metavar="FILE",
                    help="train on this text file instead of Tiny Shakespeare (a resumed run "
                         f"reads it from {CORPUS_NAME} next to the checkpoint)")
    tr.add_argument("--val-fraction", type=float, default=None, metavar="F",
                    help="the last F of the text is the validation split (default: 0.1)")
    tr.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                    help="continue from CHECKPOINT, or alone: from the newest good checkpoint "
                         "in --checkpoint-dir")
    tr.add_argument("--history", metavar="FILE",
                    help=f"where to write the history (default: CHECKPOINT_DIR/{HISTORY_NAME})")
    _add_config_flags(tr)
    tr.set_defaults(handler=run_train)

    sa = commands.add_parser("sample", help="generate text from a checkpoint",
                             description="Continue a prompt with a trained model.")
    sa.add_argument("checkpoint", help="a checkpoint written by `train` (step_N.pt, best.pt)")
    sa.add_argument("--prompt", default="", help="the text to continue (default: a new line)")
    sa.add_argument("--max-new-tokens", type=int, default=500, metavar="N")
    sa.add_argument("--temperature", type=float, default=1.0, metavar="T",
                    help="softmax temperature; 0 = greedy (default: 1.0)")
    sa.add_argument("--top-k", type=int, default=None, metavar="K",
                    help="sample among the K most likely tokens only (default: all)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--device", default="auto")
    sa.set_defaults(handler=run_sample)
    return parser


# ----------------------------------------------------------------------------- train


def corpus_settings(args: argparse.Namespace, resume: Path | None) -> dict[str, Any]:
    """``text`` (a file, or None for Tiny Shakespeare) and ``val_fraction``: as given, else as
    the resumed run had them (its ``corpus.json``), else the defaults."""
    settings: dict[str, Any] = {"text": None, "val_fraction": 0.1}
    stored = resume.parent / CORPUS_NAME if resume is not None else None
    if stored is not None and stored.is_file():
        settings.update(json.loads(stored.read_text(encoding="utf-8")))
    if args.text is not None:
        settings["text"] = str(Path(args.text).resolve())
    if args.val_fraction is not None:
        settings["val_fraction"] = args.val_fraction
    return settings


def _corpus(settings: dict[str, Any]) -> Corpus:
    try:
        if settings["text"] is None:
            return char_corpus("tinyshakespeare", settings["val_fraction"])
        path = Path(settings["text"])
        if not path.is_file():
            raise CommandLineError(f"--text {path}: no such file.")
        return text_corpus(path.read_text(encoding="utf-8"), path.stem, settings["val_fraction"])
    except (ValueError, FileNotFoundError) as err:
        raise CommandLineError(str(err)) from err


def _resume_path(args, file_values: dict, flag_values: dict) -> Path | None:
    if args.resume is None:
        return None
    if args.resume is not True:
        return Path(args.resume)
    folder = Path(flag_values.get("checkpoint_dir")
                  or file_values.get("checkpoint_dir") or DEFAULT_CHECKPOINT_DIR)
    path = latest_checkpoint(folder) if folder.is_dir() else None
    if path is None:
        raise CommandLineError(f"--resume: no checkpoint to resume from in {folder}/ "
                               "(name one with --resume PATH, or leave --resume out).")
    return path


def eval_line(row: dict, steps: int) -> str:
    """One line per evaluation: step, losses, learning rate, elapsed time."""
    return (f"step {row['step']}/{steps} | train {row['train_loss']:.4f} | "
            f"val {row['val_loss']:.4f} | eval-train {row['eval_train_loss']:.4f} | "
            f"lr {row['lr']:.3g} | {row['seconds']:.1f} s")


def run_train(args: argparse.Namespace) -> int:
    flag_values = {name: parse_flag_value(name, value) if isinstance(value, str) else value
                   for name, value in vars(args).items() if name in FIELDS}
    file_values = read_config_file(args.config) if args.config else {}
    resume = _resume_path(args, file_values, flag_values)
    settings = corpus_settings(args, resume)
    corpus = _corpus(settings)
    stored = None
    if resume is not None:
        try:
            stored = load_checkpoint(resume)
        except Exception as err:  # noqa: BLE001 - a file that does not load is a usage error
            raise CommandLineError(f"--resume {resume}: cannot be loaded ({err}).") from err
        if stored.get("tokenizer") not in (None, corpus.tokenizer.state_dict()):
            raise CommandLineError(
                f"--resume {resume}: the checkpoint was trained on another vocabulary than "
                f"{corpus.name}'s; pass the same --text as the run that wrote it.")
    model_config, config = build_configs(file_values, flag_values, corpus.tokenizer.vocab_size,
                                         stored)
    try:
        dist = from_environment(config.device)
        if dist is not None:
            dist.rows(config.batch_size)  # a global batch the processes cannot share: say so now
    except ValueError as err:
        raise CommandLineError(str(err)) from err
    main_process = dist is None or dist.is_main
    try:
        torch.manual_seed(config.seed)  # the initial weights (DDP then copies rank 0's anyway)
        model = Transformer(model_config)
        history_path = Path(args.history or Path(config.checkpoint_dir) / HISTORY_NAME)
        log = None
        if main_process:
            history_path.parent.mkdir(parents=True, exist_ok=True)
            folder = Path(config.checkpoint_dir)
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(folder / CORPUS_NAME, "w") as f:
                json.dump(settings, f)
            # a resumed run's rows so far, written whole or not at all (a crash here leaves the
            # old file as it was); the new rows are appended as they come
            with atomic_write(history_path, "w") as f:
                for row in (stored or {}).get("history", []):
                    f.write(json.dumps(row) + "\n")
            log = history_path.open("a", encoding="utf-8")
            where = f", {dist.world_size} processes ({dist.backend})" if dist else ""
            print(f"lmlab train: {corpus!r}, {model.num_parameters():,} parameters{where}; "
                  f"checkpoints in {config.checkpoint_dir}/"
                  + (f", resuming {resume}" if resume else ""), flush=True)

        def on_row(row: dict) -> None:
            if log is None:
                return
            log.write(json.dumps(row) + "\n")
            log.flush()
            if "val_loss" in row:
                tqdm.write(eval_line(row, config.steps))

        try:
            run = train(model, corpus, config, resume=resume, callback=on_row, dist=dist)
        except TrainingDiverged as err:
            if main_process:
                print(f"lmlab train: {err}", file=sys.stderr)
            return 1
        finally:
            if log is not None:
                log.close()
    finally:
        shutdown()
    if main_process:
        if run.interrupted:
            print(f"lmlab train: interrupted; continue with: --resume {run.checkpoint_path}")
            return 130
        final = run.final_val_loss
        print(f"lmlab train: done at step {run.history[-1]['step'] if run.history else 0}"
              + (f", val loss {final:.4f}" if final is not None else "")
              + f"; checkpoint {run.checkpoint_path}, history {history_path}")
    return 130 if run.interrupted else 0


# ----------------------------------------------------------------------------- sample


def run_sample(args: argparse.Namespace) -> int:
    try:
        device = pick_device(args.device)
        model, tokenizer = load_model(args.checkpoint, map_location=device)
        if tokenizer is None:
            raise CommandLineError(f"{args.checkpoint} holds no tokenizer to decode with.")
        text = generate(model.to(device), tokenizer, args.prompt, args.max_new_tokens,
                        args.temperature, args.top_k, seed=args.seed)
    except (FileNotFoundError, ValueError) as err:
        raise CommandLineError(str(err)) from err
    print(text)
    return 0


def main(argv: list[str] | None = None, prog: str = "lmlab") -> int:
    """Run a command; returns the exit status (0 done, 1 diverged, 2 usage error,
    130 interrupted)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except CommandLineError as err:
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
