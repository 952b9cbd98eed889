"""Training data: preparation, the training JSON, datasets, audio features, landmarks and the procedural demo set."""
