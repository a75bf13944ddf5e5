"""A query: sample, score and colour an activation's ε-preimage."""
