"""Availability attacks and measurements: sponge examples, early-exit slowdown, input-size and LM over-generation,
measured as latency, throughput, activation density, energy and tokens against natural inputs."""
