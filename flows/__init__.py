"""nbprod: promote Jupyter notebooks to versioned, gated, served ML pipelines.

Importing this package must stay cheap (``nbprod --help`` budget): heavy libraries
(Prefect, Evidently, BentoML, papermill) are imported inside the functions that use them.
"""

__version__ = "0.1.0"
