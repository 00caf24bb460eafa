"""``python -m ixcdoc.cli``: the console entry point."""

from ixcdoc.cli import main

main()
