"""Experiments over many runs: the ablation runner behind ``ditlab ablate`` (docs/lift.md)."""
