"""``python -m inversionview.cli``: the ``inversionview`` command."""

from inversionview.cli import main

main()
