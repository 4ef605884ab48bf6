"""Synthetic faces with ground truth, written once into the CelebAMask-HQ layout: seeded
`parameters`, exact part masks from `render`, generating `factors`, the `files` writer, the
`datamodule`, and `counterfactual` pairs."""
