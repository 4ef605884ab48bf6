"""The base layer, importing nothing else of src: errors, the model contracts, and the tensor
operations models and explanations share (map operations, seeded randomness, Gaussian terms,
the CAM family's core)."""
