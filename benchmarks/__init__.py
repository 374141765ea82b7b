"""payauth's benchmarks: run from the repository root, never collected by pytest."""
