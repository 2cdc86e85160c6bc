"""The pieces of ``python -m benchmarks.fault_injection``."""
