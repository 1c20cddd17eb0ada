"""``python -m choco.bench``: the benchmarks' entry point; the code is :mod:`choco.run.bench`."""
