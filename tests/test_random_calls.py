"""Every random draw that takes a generator also says where to draw.

torch's factory draws (``torch.randperm(n, generator=g)``) put their result on the CPU unless told
otherwise, and torch then rejects a CUDA or MPS generator ("Expected a 'cpu' device type for
generator"): code that passes a caller's generator works in every CPU test and crashes on the
first GPU. This test reads the package's source (ast) and fails on any such call: a factory draw
with ``generator=`` needs ``device=``, unless its generator is a CPU generator made in the same
function (``torch.Generator()`` or ``torch.Generator(device="cpu")``), which is always right.

Draws whose output follows an input tensor (``multinomial``, ``bernoulli``, ``x.normal_()``...)
take their device from that tensor and have no ``device=``; they are not checked here.

The same scan finds seeds offset by a number written in place (``config.seed + 1``): the offsets
are named once, in ``lmlab.device`` (``SEED_OFFSETS``, ``RANK_SEED_STRIDE``,
``RESUME_SEED_STRIDE``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lmlab"
# torch functions that create a new random tensor (on the CPU unless device= says otherwise)
FACTORY_DRAWS = {"rand", "randn", "randint", "randperm", "normal", "rand_like", "randn_like",
                 "randint_like"}


def _is_cpu_generator(node: ast.AST) -> bool:
    """``torch.Generator()`` / ``torch.Generator(device="cpu")``, maybe ``.manual_seed(...)``d."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "manual_seed"):
        node = node.func.value
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "Generator"):
        return False
    device = [kw.value for kw in node.keywords if kw.arg == "device"] + list(node.args)
    return not device or (isinstance(device[0], ast.Constant) and device[0].value == "cpu")


def _local_cpu_generators(function: ast.AST) -> set[str]:
    """Names assigned a CPU generator inside ``function`` (and never anything else)."""
    cpu, other = set(), set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    (cpu if _is_cpu_generator(node.value) else other).add(target.id)
    return cpu - other


def undeviced_draws(source: str, filename: str) -> list[str]:
    """``file:line call`` for each factory draw with a generator but no device in ``source``."""
    tree = ast.parse(source, filename)
    enclosing: dict[ast.AST, ast.AST] = {}  # call -> the innermost function around it
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(function):  # outer functions first, so inner ones overwrite
            enclosing[node] = function
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in FACTORY_DRAWS):
            continue
        keywords = {kw.arg: kw.value for kw in node.keywords}
        generator = keywords.get("generator")
        if generator is None or "device" in keywords:
            continue
        function = enclosing.get(node)
        cpu_generators = _local_cpu_generators(function) if function is not None else set()
        if isinstance(generator, ast.Name) and generator.id in cpu_generators:
            continue
        found.append(f"{filename}:{node.lineno} {ast.unparse(node)}")
    return sorted(set(found))


def test_scanner_flags_a_caller_generator_and_passes_the_fixes():
    # the bug as it was in objectives.random_partition: a caller's generator, no device
    bad = ("import torch\ndef f(n, generator=None):\n"
           "    return torch.randperm(n, generator=generator)\n")
    assert len(undeviced_draws(bad, "bad.py")) == 1
    fixed = bad.replace("generator=generator)", "generator=generator, device=generator.device)")
    assert undeviced_draws(fixed, "fixed.py") == []
    local_cpu = ("import torch\ndef f(n):\n    g = torch.Generator().manual_seed(0)\n"
                 "    return torch.randn(n, generator=g)\n")
    assert undeviced_draws(local_cpu, "ok.py") == []
    local_cuda = local_cpu.replace("torch.Generator()", "torch.Generator(device='cuda')")
    assert len(undeviced_draws(local_cuda, "cuda.py")) == 1


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_package_draws_say_where_their_generator_lives(path):
    found = undeviced_draws(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert not found, ("random draws that take a generator but no device= (they crash with a "
                       "CUDA or MPS generator): pass device=generator_device(generator):\n"
                       + "\n".join(found))


def _mentions_seed(node: ast.AST) -> bool:
    return any((isinstance(n, ast.Name) and "seed" in n.id)
               or (isinstance(n, ast.Attribute) and "seed" in n.attr) for n in ast.walk(node))


def _int_literals(node: ast.AST) -> list[int]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
            and type(n.value) is int and n.value != 0]


def literal_seed_offsets(source: str, filename: str) -> list[str]:
    """``file:line expression`` for seed arithmetic with a number in it: ``seed + 1``,
    ``seed + 7919 * step``, or any sum or product with a number inside ``.manual_seed(...)``.
    The offsets are named once, in ``lmlab.device`` (SEED_OFFSETS and the strides)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        suspects = []
        if (isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult))
                and _mentions_seed(node)):
            suspects.append(node)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "manual_seed"):
            suspects += [a for a in node.args if isinstance(a, ast.BinOp)]
        found += [f"{filename}:{s.lineno} {ast.unparse(s)}" for s in suspects if _int_literals(s)]
    return sorted(set(found))


def test_seed_scanner_flags_numbered_offsets_and_passes_named_ones():
    bad = ("def f(config, base, step, g):\n    g.manual_seed(base + 1)\n"
           "    return config.seed + 1000, config.seed + 7919 * step\n")
    assert len(literal_seed_offsets(bad, "bad.py")) == 3
    named = ("def f(config, g):\n    g.manual_seed(config.seed + SEED_OFFSETS['objective'])\n"
             "    return config.seed % 2**32, [config.seed + i for i in range(3)]\n")
    assert literal_seed_offsets(named, "ok.py") == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_package_seed_offsets_are_named(path):
    found = literal_seed_offsets(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert not found, ("seeds offset by a number written in place: name the offset in "
                       "lmlab.device.SEED_OFFSETS (or a stride next to it):\n" + "\n".join(found))
