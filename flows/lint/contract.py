"""Notebook contract rules: what papermill and the pipeline need from every notebook.

- ``kernel-metadata-missing``: error. Neither ``metadata.kernelspec.language`` nor
  ``metadata.language_info.name`` is set: papermill refuses to run such a notebook.
- ``output-dir-missing``: error. No ``output_dir`` parameter (the notebook contract).
"""

from __future__ import annotations

from flows.lint.cells import Notebook, kernel_language
from flows.lint.findings import Finding
from flows.lint.parameters import parameter_names


def check_kernel_metadata(notebook: Notebook) -> list[Finding]:
    """kernel-metadata-missing."""
    language, _ = kernel_language(notebook.raw)
    if language:
        return []
    return [
        Finding(
            "kernel-metadata-missing",
            "error",
            None,
            "the notebook records no kernel language (metadata.kernelspec): papermill "
            "refuses to run it",
            "open it in Jupyter, select the Python 3 kernel and save (this writes "
            "metadata.kernelspec)",
        )
    ]


def check_outputs(notebook: Notebook) -> list[Finding]:
    """output-dir-missing (outputs.json is optional: nbprod reads the files in output_dir)."""
    out: list[Finding] = []
    params = notebook.params
    if params is not None and "output_dir" not in parameter_names(params):
        out.append(
            Finding(
                "output-dir-missing",
                "error",
                params.index,
                "the parameters cell has no `output_dir`: the pipeline cannot tell the notebook "
                "where to write",
                'add `output_dir = "../.nbprod/scratch/<notebook>"` to the parameters cell and '
                "write every file under it",
            )
        )
    return out
