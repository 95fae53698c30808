"""Command-line tools run once, outside training (weight conversion)."""
