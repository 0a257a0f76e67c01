"""Samples: reading sources, the upload file, alignment, drift, the stereo projection, conform and stem writing."""
