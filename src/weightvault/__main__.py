"""``python -m weightvault``."""

from weightvault.cli.main import main

main()
