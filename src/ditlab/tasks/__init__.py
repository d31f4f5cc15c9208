"""Tasks turn batches into token streams and back."""
