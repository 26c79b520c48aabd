"""The explorer page's panels (samples, latent levels, model, images, gallery, directions)
and the controller that runs the user's own images through the engine."""
