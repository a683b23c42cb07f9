"""Model files: the official catalog (``catalog``), downloading (``download``), finding a model on disk
(``resolve``), loading its components (``loading``) and writing converted bundles (``convert``).

Submodules are imported explicitly; this package imports nothing heavy by itself.
"""
