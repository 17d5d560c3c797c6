"""The modules packed into model archives: marport's serving code, one package.

Installed as `marport.handlers`; inside each archive they are the package `marport_serving`
(names.ARCHIVE_PACKAGE), never generic top-level modules that could shadow a user's
or a library's (`review`, `placement`, `int8` ...). The modules import each other relatively,
so the same files work under either name. Each archive's TorchServe entry (`*_handler.py` at
its root, written by `marport build`) and the code that runs from a tarball's root
(`ray_adapter.py`, the toolkit's `code/inference.py`) import the archive's `marport_serving`.
"""
