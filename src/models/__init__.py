"""LightningModules (VAE, ...) built from the blocks in nets.py."""
