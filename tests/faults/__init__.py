"""The fault-injection suite: real worker processes, a producer with known ids, faults, and a checker.

`scenario.run_scenario` wires the parts together; `tests/test_fault_suite.py` runs a short seeded form in CI,
and `python -m tests.faults.soak --minutes N --seed S` runs the long form on demand.
"""
