"""DiT backbone: attention, embeddings, blocks."""
