"""Mesh and partitioning, optimizer, training loop, Orbax checkpoints, metrics."""
