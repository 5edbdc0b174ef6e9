"""Side-by-side benchmarks of Ballast against peers; each prints a ratio."""
