"""``python -m lmlab train ...`` and ``python -m lmlab sample ...`` (see :mod:`lmlab.cli`)."""

from .cli import main

raise SystemExit(main(prog="python -m lmlab"))
