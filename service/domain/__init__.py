"""Domain rules the routers and tools call: rating validation and training administration."""
