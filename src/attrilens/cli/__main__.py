"""`python -m attrilens.cli`: the same entry point as the `attrilens` script."""

from attrilens.cli.app import main

main()
