"""The benchmark: `bash bench/run` (see docs/performance.md). Not imported by the hub itself."""
