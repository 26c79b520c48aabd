"""The bundled model and its card, installed as the package ``realnvp_resources``.

Found through :mod:`core.files.resources`; nothing here is code to import.
"""
