"""Inference: loading trained runs and sampling from them.

The package itself imports nothing (so that `xbook serve` can check its port, or `xbook write` its flags,
before jax loads): import what you use from its modules, e.g. `from xbook.infer.generate import load_run`.
"""
