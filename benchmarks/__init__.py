"""qtrain benchmarks (issue 8 speed, issue 9 convergence); run from the repository root: python -m benchmarks.<name>."""
