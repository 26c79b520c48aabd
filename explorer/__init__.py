"""The Real NVP desktop explorer (Qt).

Folders show the layers: ``engine/`` (the only place torch is used), ``state/`` (Qt-free
view state), ``panels/`` (the explorer page), ``training/`` (the training workspace),
``widgets/`` (shared Qt pieces); ``app`` and ``main_window`` only wire them together.
"""
