"""``python -m agentrft.cli``: the same as the ``agentrft`` command."""

from agentrft.cli import entry

entry()
