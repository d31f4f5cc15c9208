"""ditlab: diffusion transformers in which every token carries its own noise level."""

__version__ = "0.1.0"
