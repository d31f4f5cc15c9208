"""Training infrastructure: atomic checkpoints, EMA of weights, and run logging.

Kept free of model and data code so a sampling script can load weights without importing the
training loop, and the loop can be tested with tiny stand-in models.
"""
