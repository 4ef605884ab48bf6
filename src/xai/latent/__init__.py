"""Explanations of a latent space: latent and attribute sweeps, attribute control of a CVAE,
attention mass on face parts."""
