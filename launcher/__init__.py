"""Process tooling: start, watch and stop draftlink's processes (`make run`, tests, benchmarks)."""
