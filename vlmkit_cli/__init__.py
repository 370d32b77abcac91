"""The ``vlmkit`` command line: a thin application over the :mod:`vlmkit` library."""
