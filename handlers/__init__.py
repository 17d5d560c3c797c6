"""The modules packed into model archives.

Not used as a package: TorchServe unpacks an archive's modules flat into one folder,
so they import each other by bare name (`from serving_common import ...`). The wheel
installs this folder as `marport.handlers` only so that `marport build` can find the
files to pack (marport/resources.py); tools that run a model core in-process put the
folder itself on sys.path (`marport.resources.use_handlers`).
"""
