"""What a checkpoint knows about its data: typicality of an image against the test set,
per-class latent statistics, and heat maps of where the bits go."""
