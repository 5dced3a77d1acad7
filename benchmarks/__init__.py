"""Throughput benchmarks: interactionlog's worker against the per-message loop, FastStream and the machine's bound.

Run `python -m benchmarks` from the repository root (`--quick` for a smoke run, `--help` for the sizes). The suite
starts its own throwaway redis-server and PostgreSQL cluster, so it never touches a shared one.
"""
