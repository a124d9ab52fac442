"""The package version, in a leaf module that imports nothing.

``cryopick.__version__``, the ``cryopick_version`` written into model cards and ``cryopick --version`` all
read it from here, and ``pyproject.toml`` reads it too (``[tool.setuptools.dynamic]``), so there is one place
to change it and no module needs to import the package root to learn it.
"""

__version__ = "0.1.0"
