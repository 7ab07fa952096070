"""Recommendation models in PyTorch and NumPy; nothing here imports HTTP, SQL or worker code."""
