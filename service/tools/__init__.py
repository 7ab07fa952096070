"""Command-line only: file import, offline training and evaluation, datasets."""
