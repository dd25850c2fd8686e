"""The bottom layer: process infrastructure every app may use (the Redis cache and its fail-open
helpers, Prometheus counters, tracing, the client's address). Imports no app of the hub."""
