"""A way in: folders watched for audio, each file turned into a separation request."""
