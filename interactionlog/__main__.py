"""`python -m interactionlog` runs the command line."""

from .cli import main

main()
