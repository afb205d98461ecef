"""lensbias benchmarks: run all with ``python -m benchmarks`` (figures go to docs/)."""
