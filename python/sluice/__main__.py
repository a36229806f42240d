"""``python -m sluice ...`` runs the ``sluice`` command."""

from sluice._cli import main

main()
