"""Video and audio through ffmpeg: the one process wrapper, probing, decoding, encoding, 4:2:0 colour, conversions."""
