"""Launchers: TPU pods (`python -m launch.pod`), sweeps (`python -m launch.sweep`) and their libtpu flags."""
