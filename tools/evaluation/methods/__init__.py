"""The evaluation methods beyond the built-in global and sv (tools/retrieval/methods.py), one module
per family; every module of this package is imported here, so a module that calls
``register_method`` is all a new method needs.

    asmk.py        asmk, asmk_rerank
    expansion.py   qe, dba, dba_qe, superglobal and compositions such as dba_qe+sv
    learned.py     learned, learned_binary, E+learned
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
