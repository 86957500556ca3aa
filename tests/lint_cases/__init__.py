"""Notebooks for ``nbprod lint``, each reproducing a pattern seen in public notebooks."""
