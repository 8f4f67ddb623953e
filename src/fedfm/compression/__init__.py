"""Compression of what clients upload: stochastic quantisation, top-k with error feedback."""
