"""Strategies: cache policies and decoding policies, registered by name in ``strategies.registry``."""
