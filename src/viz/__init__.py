"""Tensors -> uint8 images: grids, strips, overlays."""
