"""Built-in algorithm plugins, one package each. Each package's ``__init__`` registers a config
(torch-free) and names its implementation, imported only when a run uses it. They are found
the way third-party plugins are: through the ``medley.algorithms`` entry points in
pyproject.toml (a new built-in needs a line there and ``pip install -e .``)."""
