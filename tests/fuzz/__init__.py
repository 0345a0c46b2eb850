"""Property-based tests: requests generated from the model registry, against the sandbox."""
