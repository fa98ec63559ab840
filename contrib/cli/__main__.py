"""``python -m contrib.cli``: the same as the ``videoflow`` console script."""

from contrib.cli.commands import main

main()
