"""Dubbing a video with a trained generator: alignment to the audio, face crops, generation, soft paste-back."""
