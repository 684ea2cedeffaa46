"""cellpix benchmarks: `python -m benchmarks speed|accuracy|report|all [--quick]`.

Every figure in docs/benchmarks.md comes from the CSVs a run writes under
benchmarks/results/; nothing is typed in by hand. Slow runs live here, not
in the timed test suite.
"""
