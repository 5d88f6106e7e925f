"""``python -m hil.cli``."""

from hil.cli import main

main()
