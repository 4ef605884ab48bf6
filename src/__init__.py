"""latent-lens: train generative models and classifiers, and explain them while they train."""
