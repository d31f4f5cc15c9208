"""Noise paths, objectives, samplers, guidance."""
