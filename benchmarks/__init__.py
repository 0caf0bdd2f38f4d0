"""Side-by-side performance runs of adamjax (not tests): ``python -m benchmarks [--quick]``."""
