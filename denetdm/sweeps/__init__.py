"""Sweeps: the Optuna loop, pruning, search spaces, the sweep jobs' error policy, the GPU reproduction."""
