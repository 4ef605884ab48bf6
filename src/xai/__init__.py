"""Pure-torch explanation and analysis algorithms: models (or callables) and tensors in, tensors out."""
