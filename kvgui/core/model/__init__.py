"""What a model is, read from its header: layers, caches, weights; the catalog."""
