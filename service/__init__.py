"""mfserve: a matrix-factorization recommendation microservice."""

__version__ = "0.1.0"
