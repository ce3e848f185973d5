"""Analysis on top of tracked runs: comparing models, significance tests."""
