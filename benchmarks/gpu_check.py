"""`make gpu-check`: everything that needs a CUDA GPU, in one run of under 8 minutes.

    python benchmarks/gpu_check.py [--json build/gpu_check.json]
    python benchmarks/gpu_check.py --rehearse   # the same script on the CPU, tiny sizes

1. the unit tests marked ``cuda`` (tests/test_cuda.py): bf16 autocast, fused AdamW, flash SDPA
   against the naive backend, inductor, fp16 + GradScaler, resume, random draws on the device;
2. a smoke matrix, one line per case: every objective x {sdpa, naive} x {bf16, fp16 + GradScaler}
   x compile {off, on}, 20 steps each; a resume from a checkpoint; cached generation;
   ``attention_cost.measure``; host-device syncs per training step counted with
   ``torch.cuda.set_sync_debug_mode("warn")``; the causal training forward and backward with only
   the flash SDPA backend allowed (it raises if anything forces another kernel);
3. the quickstart's ``gpu`` profile (nanoGPT's Shakespeare-char shape): wall time to validation
   loss 1.47, start-up included;
4. training throughput at GPT-2 124M shape (12 layers, 12 heads, 768 wide, context 1024, batch 12)
   with compile and bf16: tokens/s and model FLOPs utilization (MFU) against the device's peak.

Each phase has a time cap (a case past it is reported as skipped, never silently dropped), and the
JSON file is rewritten after each phase, so a run cut short still leaves what it measured. On a
machine without CUDA it says so and exits 0. ``--rehearse`` runs phases 2-4 on the CPU at tiny
sizes (no compile, no CUDA-only checks): it checks the script itself without a GPU.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lmlab  # noqa: E402
from lmlab import ModelConfig, TrainConfig, Transformer, train  # noqa: E402
from lmlab.checkpoint import checkpoint_name  # noqa: E402
from lmlab.data import char_corpus  # noqa: E402
from lmlab.device import autocast_dtype  # noqa: E402
from lmlab.heads import transformer_with_pair_head  # noqa: E402
from lmlab.objectives import OBJECTIVES, ObjectiveContext  # noqa: E402

TARGET_VAL_LOSS = 1.47  # nanoGPT's Shakespeare-char reaches 1.4674 (114 s on an H100)
# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s, without sparsity), matched
# against torch.cuda.get_device_name(). fp16 peaks are used where bf16 is not native.
PEAK_FLOPS = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12),
    ("A100", 312e12), ("A10G", 125e12), ("A10", 125e12), ("L40S", 362e12), ("L40", 181e12),
    ("L4", 121e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("A6000", 155e12),
    ("V100", 125e12), ("T4", 65e12),
]
CAUSAL_OBJECTIVES = ("clm", "prefix")  # the others read both ways: a bidirectional model


def peak_flops(name: str) -> tuple[float | None, str]:
    for key, flops in PEAK_FLOPS:
        if key.lower() in name.lower():
            return flops, f"{key}: {flops / 1e12:.0f} TFLOP/s dense (datasheet)"
    return None, f"{name}: peak unknown, MFU not computed (add it to PEAK_FLOPS)"


class Report:
    """Lines printed as cases finish, a summary, and one JSON file rewritten after each phase."""

    def __init__(self, path: Path):
        self.path, self.start = path, time.perf_counter()
        self.data: dict = {"cases": [], "phases": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def case(self, phase: str, name: str, fn: Callable[[], str | None], deadline: float) -> None:
        """Run one case: print 'passed' (with what it returned) or the error; skip past the
        phase's deadline."""
        if time.perf_counter() > deadline:
            status, detail, seconds = "skipped", "phase time cap reached", 0.0
        else:
            t0 = time.perf_counter()
            try:
                detail, status = fn() or "", "passed"
            except Skip as reason:
                detail, status = str(reason), "skipped"
            except Exception as error:  # one line per case, whatever it raised
                status = "FAILED"
                first_line = (str(error).splitlines() or [""])[0]
                detail = f"{type(error).__name__}: {first_line}"
                self.data.setdefault("tracebacks", {})[f"{phase}/{name}"] = traceback.format_exc()
            seconds = time.perf_counter() - t0
        print(f"  [{status:>7}] {phase:<10} {name:<44} {seconds:6.1f} s  {detail}", flush=True)
        self.data["cases"].append({"phase": phase, "case": name, "status": status,
                                   "seconds": round(seconds, 2), "detail": detail})

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, default=str))

    def summary(self) -> int:
        counts: dict[str, int] = {}
        for c in self.data["cases"]:
            counts[c["status"]] = counts.get(c["status"], 0) + 1
        self.data["summary"] = counts
        self.save()
        print(f"\nsummary: {counts.get('passed', 0)} passed, {counts.get('FAILED', 0)} failed, "
              f"{counts.get('skipped', 0)} skipped in {self.elapsed():.0f} s; {self.path}")
        return 1 if counts.get("FAILED") else 0


class Skip(Exception):
    """A case that does not apply here (its reason is printed)."""


def tiny_model(corpus, causal: bool, attention: str, seed: int = 0, pair_head: bool = False,
               **kw) -> Transformer:
    torch.manual_seed(seed)
    shape = dict(vocab_size=corpus.tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2,
                 d_model=64, causal=causal, attention=attention)
    config = ModelConfig(**{**shape, **kw})
    return transformer_with_pair_head(config) if pair_head else Transformer(config)


def train_config(device: str, **kw) -> TrainConfig:
    base = dict(steps=20, batch_size=16, lr=3e-3, warmup_steps=2, eval_every=20, eval_batches=2,
                progress=False, device=device)
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------ phase 1


def run_cuda_tests(report: Report) -> None:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "test_cuda.py")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    print("\n".join("  " + line for line in tail[-15:]))
    report.data["phases"]["cuda_tests"] = {"returncode": proc.returncode,
                                           "seconds": round(time.perf_counter() - t0, 1),
                                           "summary": tail[-1] if tail else ""}
    report.data["cases"].append({"phase": "tests", "case": "pytest -m cuda",
                                 "status": "passed" if proc.returncode == 0 else "FAILED",
                                 "seconds": round(time.perf_counter() - t0, 1),
                                 "detail": tail[-1] if tail else ""})


# ------------------------------------------------------------------------------ phase 2


def smoke_matrix(report: Report, corpus, device: str, cap_s: float, rehearse: bool) -> None:
    deadline = time.perf_counter() + cap_s
    dtypes = ("bfloat16", "float16")
    steps = 3 if rehearse else 20  # fp16 autocast is slow on a CPU: the rehearsal runs 3
    # eager cases first (seconds each), then compiled ones (each compiles): a cap cuts compiles
    for compile_on in (False, True):
        for objective in OBJECTIVES:
            for attention in ("sdpa", "naive"):
                for dtype in dtypes:
                    on_off = "on" if compile_on else "off"
                    name = f"{objective}/{attention}/{dtype}/compile={on_off}"

                    def case(objective=objective, attention=attention, dtype=dtype,
                             compile_on=compile_on):
                        if compile_on and rehearse:
                            raise Skip("rehearsal: compile is not run on the CPU")
                        model = tiny_model(corpus, objective in CAUSAL_OBJECTIVES, attention,
                                           pair_head=OBJECTIVES[objective].pair_head)
                        run = train(model, corpus, train_config(
                            device, steps=steps, eval_every=steps, dtype=dtype,
                            compile=compile_on, objective=objective))
                        last = run.history[-1]
                        if not math.isfinite(last["train_loss"]):
                            raise RuntimeError(f"train loss {last['train_loss']}")
                        return f"train {last['train_loss']:.3f} val {last['val_loss']:.3f}"

                    report.case("smoke", name, case, deadline)
    report.save()

    def resume():
        """Stop a 10-step run at step 5 (its checkpoint), resume it, compare with the whole run:
        exactly on CPU, within tolerance on CUDA (atomics in backward reorder sums)."""
        with tempfile.TemporaryDirectory() as folder:
            cfg = train_config(device, steps=10, dtype="float32", checkpoint_dir=folder,
                               checkpoint_every=5)
            whole = train(tiny_model(corpus, True, "sdpa"), corpus, cfg)
            resumed = train(tiny_model(corpus, True, "sdpa", seed=1), corpus, cfg,
                            resume=Path(folder) / checkpoint_name(5))
        gap = abs(whole.final_val_loss - resumed.final_val_loss)
        if gap > 1e-3 * whole.final_val_loss:
            raise AssertionError(f"resumed val {resumed.final_val_loss:.5f} vs uninterrupted "
                                 f"{whole.final_val_loss:.5f}")
        return f"val loss {resumed.final_val_loss:.4f}, gap {gap:.1e}"

    def cached_generation():
        from lmlab.generate import timed_generation

        model = tiny_model(corpus, True, "sdpa").to(device)
        idx = torch.zeros(1, 8, dtype=torch.long, device=device)
        cached = timed_generation(model, idx, 48, use_cache=True, repeats=2)
        full = timed_generation(model, idx, 48, use_cache=False, repeats=2)
        if not torch.equal(cached["ids"], full["ids"]):
            raise AssertionError("greedy tokens differ with and without the KV cache")
        return f"{full['seconds'] / cached['seconds']:.1f}x faster with the cache"

    def attention_cost():
        from lmlab.attention_cost import measure

        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        naive = measure("naive", 1024, device=device, dtype=dtype)
        fused = measure("sdpa", 1024, device=device, dtype=dtype)
        key = "peak_bytes" if "peak_bytes" in naive else "allocated_bytes"
        if not naive[key] >= naive["score_bytes"] > fused[key]:
            raise AssertionError(f"memory naive {naive[key]}, fused {fused[key]}, one score "
                                 f"tensor {naive['score_bytes']}")
        return (f"T=1024: naive {naive['seconds'] * 1e3:.2f} ms {naive[key] / 2**20:.1f} MiB, "
                f"sdpa {fused['seconds'] * 1e3:.2f} ms {fused[key] / 2**20:.1f} MiB")

    def syncs_per_step():
        if device != "cuda":
            raise Skip("rehearsal: CUDA only")
        marks: list[int] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train(tiny_model(corpus, True, "sdpa"), corpus,
                      train_config(device, steps=12, eval_every=1000),
                      callback=lambda row: marks.append(len(caught)))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        per_step = sorted(b - a for a, b in zip(marks[:-2], marks[1:-1], strict=True))
        report.data["syncs_per_step"] = per_step
        return (f"host-device syncs per training step (median of {len(per_step)}): "
                f"{per_step[len(per_step) // 2]} (the aim: 0 between log steps)")

    def flash_only():
        if device != "cuda":
            raise Skip("rehearsal: CUDA only")
        from torch.nn.attention import SDPBackend, sdpa_kernel

        model = tiny_model(corpus, True, "sdpa").to(device)
        ctx = ObjectiveContext(corpus.tokenizer, torch.Generator(device=device).manual_seed(0))
        x = torch.randint(0, corpus.tokenizer.n_chars, (8, 64), device=device)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), \
                torch.autocast("cuda", dtype=autocast_dtype(torch.device(device))):
            loss = OBJECTIVES["clm"].loss(model, x, torch.roll(x, -1, 1), ctx)
            loss.backward()
            lmlab.generate(model, corpus.tokenizer, "ROMEO:", 16, seed=0)  # KV-cache decoding
        return f"flash-only forward + backward + cached decoding ran (loss {float(loss):.3f})"

    deadline = time.perf_counter() + 40
    for name, fn in (("resume from a checkpoint", resume), ("cached generation", cached_generation),
                     ("attention_cost.measure", attention_cost),
                     ("sync debug mode: syncs per step", syncs_per_step),
                     ("flash-only SDPA backend", flash_only)):
        report.case("smoke", name, fn, deadline)
    report.save()


# ------------------------------------------------------------------------------ phase 3


class _Reached(Exception):
    pass


def notebook_sizes(path: Path, profile: str) -> dict:
    """A notebook's ``SIZES = {"ci": dict(...), ...}[profile]`` entry for ``profile``, read from
    its source (so the check trains what the notebook trains, whatever it is tuned to)."""
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "SIZES = {" in source:
            start = source.index("SIZES = {") + len("SIZES = ")
            table = ast.parse(source[start:source.index("}[profile]") + 1], mode="eval").body
            for key, value in zip(table.keys, table.values, strict=True):
                if ast.literal_eval(key) == profile:
                    return {kw.arg: ast.literal_eval(kw.value) for kw in value.keywords}
    raise ValueError(f"{path.name} has no SIZES[{profile!r}] entry")


def quickstart_gpu(report: Report, device: str, cap_s: float, rehearse: bool) -> None:
    """The quickstart notebook's ``gpu`` profile: its SIZES entry, its TrainConfig."""
    t0 = time.perf_counter()
    corpus = char_corpus("tinyshakespeare")
    size = notebook_sizes(ROOT / "notebooks" / "00_quickstart.ipynb", "gpu")
    if rehearse:
        size.update(n_layer=1, n_head=2, d_model=32, block_size=32, batch_size=8, steps=40,
                    warmup=10, eval_every=10)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=corpus.tokenizer.vocab_size,
                                    block_size=size["block_size"], n_layer=size["n_layer"],
                                    n_head=size["n_head"], d_model=size["d_model"],
                                    dropout=size["dropout"]))
    config = TrainConfig(steps=size["steps"], batch_size=size["batch_size"], lr=size["lr"],
                         min_lr=size["lr"] / 10, warmup_steps=min(size["warmup"], size["steps"]),
                         eval_every=size["eval_every"], eval_batches=20, seed=0, progress=False,
                         device=device)
    evals: list[tuple[int, float, float]] = []

    def watch(row):
        if "val_loss" in row:
            evals.append((row["step"], row["val_loss"], time.perf_counter() - t0))
            if row["val_loss"] <= TARGET_VAL_LOSS:
                raise _Reached
        if time.perf_counter() - t0 > cap_s:
            raise TimeoutError

    outcome = "target reached"
    try:
        train(model, corpus, config, callback=watch)
        outcome = "ran all steps without reaching the target"
    except _Reached:
        pass
    except TimeoutError:
        outcome = f"stopped at the {cap_s:.0f} s cap"
    seconds = time.perf_counter() - t0
    reached = [e for e in evals if e[1] <= TARGET_VAL_LOSS]
    result = {"target": TARGET_VAL_LOSS, "outcome": outcome, "evals": evals,
              "seconds_to_target": round(reached[0][2], 1) if reached else None,
              "step_at_target": reached[0][0] if reached else None,
              "seconds": round(seconds, 1), "dtype": str(autocast_dtype(torch.device(device))),
              "nanogpt_reference": "val 1.4674 in 114 s on an H100 (42 s of it start-up)"}
    report.data["quickstart_gpu"] = result
    line = (f"val {TARGET_VAL_LOSS} at step {reached[0][0]} after {reached[0][2]:.1f} s "
            "(start-up included)") if reached else (
        f"{outcome}; best val {min((e[1] for e in evals), default=float('nan')):.3f}")
    print(f"  quickstart gpu profile: {line}", flush=True)
    report.data["cases"].append({"phase": "quickstart", "case": "time to val 1.47",
                                 "status": "passed" if reached or rehearse else "FAILED",
                                 "seconds": round(seconds, 1), "detail": line})
    report.save()


# ------------------------------------------------------------------------------ phase 4


def throughput_124m(report: Report, device: str, cap_s: float, rehearse: bool) -> None:
    """GPT-2 124M shape, nanoGPT's bench: 12 x 12 x 768, context 1024, batch 12, vocab 50304,
    no bias, no dropout, compile + bf16. Tokens/s over the steps after the compile warm-up."""
    corpus = char_corpus("tinyshakespeare")
    shape = dict(n_layer=12, n_head=12, d_model=768, block_size=1024, batch=12, steps=60,
                 warmup=15)
    if rehearse:
        shape.update(n_layer=1, n_head=2, d_model=32, block_size=32, batch=4, steps=10, warmup=3)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50304, block_size=shape["block_size"],
                         n_layer=shape["n_layer"], n_head=shape["n_head"],
                         d_model=shape["d_model"], dropout=0.0, bias=False)
    model = Transformer(config)
    n_params = model.num_parameters()
    stamps: list[float] = []
    t0 = time.perf_counter()

    def stamp(row):
        stamps.append(time.perf_counter())
        if time.perf_counter() - t0 > cap_s:
            raise TimeoutError

    tc = TrainConfig(steps=shape["steps"], batch_size=shape["batch"], lr=6e-4, warmup_steps=10,
                     eval_every=10**6, eval_batches=1, seed=0, progress=False, device=device,
                     dtype="bfloat16", compile=not rehearse)
    with contextlib.suppress(TimeoutError):
        train(model, corpus, tc, callback=stamp)
    # the last step also evaluates: leave it out; the first `warmup` steps include the compile
    timed = stamps[shape["warmup"]: -1]
    tokens_per_step = shape["batch"] * shape["block_size"]
    result: dict = {"shape": shape, "parameters": n_params, "steps_timed": len(timed) - 1,
                    "seconds_total": round(time.perf_counter() - t0, 1)}
    if len(timed) >= 2:
        tok_s = tokens_per_step * (len(timed) - 1) / (timed[-1] - timed[0])
        # FLOPs per token: 6 N for the matmuls forward and backward (N without position
        # embeddings), plus 12 L T d for attention's QK^T and PV (PaLM, Chowdhery et al. 2022,
        # appendix B; nanoGPT's estimate_mfu)
        flops_per_token = 6 * n_params + 12 * shape["n_layer"] * shape["d_model"] * \
            shape["block_size"]
        name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
        peak, peak_note = peak_flops(name)
        result.update(tokens_per_s=round(tok_s), flops_per_token=flops_per_token,
                      device_name=name, peak_flops=peak, peak_note=peak_note,
                      mfu=round(flops_per_token * tok_s / peak, 4) if peak else None,
                      nanogpt_reference="about 430k tokens/s on an H100 with compile; "
                                        "target 15% more")
        line = (f"{tok_s:,.0f} tokens/s, MFU "
                + (f"{result['mfu']:.1%}" if peak else "n/a") + f" ({peak_note})")
        status = "passed"
    else:
        line, status = f"too few steps timed in {cap_s:.0f} s", "FAILED"
    print(f"  124M throughput: {line}", flush=True)
    report.data["throughput_124m"] = result
    report.data["cases"].append({"phase": "throughput", "case": "GPT-2 124M, compile + bf16",
                                 "status": status, "seconds": result["seconds_total"],
                                 "detail": line})
    report.save()


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=ROOT / "build" / "gpu_check.json")
    parser.add_argument("--rehearse", action="store_true",
                        help="run phases 2-4 on the CPU at tiny sizes (checks this script)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["tests", "smoke", "quickstart", "throughput"])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.rehearse:
        print("gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
              "nothing to check. Run it where a CUDA GPU is present.")
        return 0
    device = "cuda" if not args.rehearse else "cpu"
    os.environ.setdefault("LMLAB_PROFILE", "gpu" if device == "cuda" else "ci")
    report = Report(args.json)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (rehearsal)"
    report.data["machine"] = {"device": name, "torch": torch.__version__,
                              "cuda": torch.version.cuda, "python": platform.python_version(),
                              "capability": torch.cuda.get_device_capability()
                              if device == "cuda" else None,
                              "auto_dtype": str(autocast_dtype(torch.device(device)))}
    print(f"gpu-check on {name}, torch {torch.__version__}, auto dtype "
          f"{report.data['machine']['auto_dtype']}", flush=True)
    corpus = char_corpus("tinyshakespeare")
    smoke_cap = 300 if args.rehearse else 110  # fp16 autocast on a CPU is slow
    phases = [
        ("tests", lambda: run_cuda_tests(report), not args.rehearse),
        ("smoke", lambda: smoke_matrix(report, corpus, device, smoke_cap, args.rehearse), True),
        ("quickstart", lambda: quickstart_gpu(report, device, 110, args.rehearse), True),
        ("throughput", lambda: throughput_124m(report, device, 110, args.rehearse), True),
    ]
    for phase, run, wanted in phases:
        if phase in args.skip or not wanted:
            continue
        print(f"\n== {phase} ({report.elapsed():.0f} s elapsed)", flush=True)
        try:
            run()
        except Exception as error:  # a phase that breaks is a line in the report, not the end
            report.data["cases"].append({"phase": phase, "case": "(phase)", "status": "FAILED",
                                         "seconds": 0, "detail": f"{type(error).__name__}: "
                                                                 f"{error}"})
            traceback.print_exc()
            report.save()
    return report.summary()


if __name__ == "__main__":
    sys.exit(main())
