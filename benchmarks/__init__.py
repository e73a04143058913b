"""Speed, memory and equivalence benchmarks (results in ``benchmarks/README.md``); each ``bench_*.py`` is a script."""
