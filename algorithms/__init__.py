"""Built-in algorithm plugins, one package each. Importing this package imports every
subpackage whose name does not start with ``_``; each ``__init__`` registers a config
(torch-free) and names its implementation, imported only when a run uses it."""

import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
