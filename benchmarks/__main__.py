"""`python -m benchmarks` runs the suite."""

from .run import main

main()
