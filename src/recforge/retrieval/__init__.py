"""Candidate retrieval for dot-product models: an approximate nearest-neighbour index of their item vectors."""
