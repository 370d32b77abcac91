"""Training recipes: an application on top of the :mod:`vlmkit` library (which never imports it).

Runs on one CPU or through HF accelerate on many GPUs: the same code, configured by an
``accelerate config`` file rather than a launcher of our own.
"""
