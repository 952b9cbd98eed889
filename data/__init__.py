"""Data: DINet's crop geometry, the training JSON, datasets, audio features, video I/O and the demo set."""
