"""The Real NVP desktop explorer (Qt). Only :mod:`explorer.engine` imports torch."""
