"""`nbprod lint`: the case set (precision, recall, no crash), every rule with a notebook that
breaks it and one that does not, ``--fix``, and the command (no kernels)."""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from lint_cases.cases import CASES
from lint_cases.notebooks import Case, Code, notebook_json, write_case

import flows.lint
from flows.cli import main
from flows.errors import LintError
from flows.lint import LintReport, lint_notebook, register_commands, render_report
from flows.lint.cells import NotebookWriteError
from flows.lint.estimators import estimator_object, random_state_use
from flows.lint.generic import ruff_binary, run_ruff

ROOT = Path(__file__).resolve().parent.parent
PARAMS = 'output_dir = "out"\nseed = 7'
WRITE_OUTPUTS = (
    "import json, pathlib\n"
    'pathlib.Path(output_dir, "outputs.json").write_text(json.dumps({"outputs": {}}))'
)
Found = set[tuple[str, str, int | None]]


def write_notebook(
    folder: Path,
    *cells: str,
    params: str | None = PARAMS,
    end: str | None = WRITE_OUTPUTS,
    counts: list[int | None] | None = None,
    name: str = "nb.ipynb",
) -> Path:
    """A contract-abiding notebook around ``cells``: parameters cell first, outputs.json last.

    Cell indexes: the parameters cell is 0 (when given), then ``cells`` in order.
    """
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    sources = ([params] if params is not None else []) + list(cells) + ([end] if end else [])
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    if params is not None:
        nb.cells[0].metadata["tags"] = ["parameters"]
    for cell, count in zip(nb.cells, counts or [], strict=False):
        cell.execution_count = count
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nbformat.write(nb, path)
    return path


def found(report: LintReport) -> Found:
    return {(f.rule, f.severity, f.cell) for f in report.findings}


def rules(report: LintReport) -> set[str]:
    return {f.rule for f in report.findings}


def leftovers(folder: Path) -> list[str]:
    """Files other than notebooks and the project marker: what a failed write would leave."""
    return sorted(
        p.name for p in folder.rglob("*") if p.is_file() and p.suffix not in (".ipynb", ".toml")
    )


# --------------------------------------------------------------------------- the case set


@pytest.fixture(scope="module")
def case_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LintReport]:
    """Every case linted once; a case that crashes is recorded as its exception."""
    folder = tmp_path_factory.mktemp("lint-cases")
    results: dict[str, Any] = {}
    for case in CASES:
        try:
            results[case.name] = lint_notebook(write_case(case, folder))
        except Exception as exc:  # recorded: test_no_case_crashes names it
            results[case.name] = exc
    return results


def test_no_case_crashes(case_results: dict[str, LintReport]) -> None:
    crashed = {k: repr(v) for k, v in case_results.items() if not isinstance(v, LintReport)}
    assert crashed == {}


def test_case_set_covers_every_rule_with_true_and_false_positive_traps() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)
    planted = {rule for case in CASES for rule, _, _ in case.expected()}
    assert planted >= {
        "parameters-missing",
        "parameters-not-literal",
        "parameters-tags-not-list",
        "parameters-multiple",
        "parameters-not-first",
        "output-dir-missing",
        "kernel-metadata-missing",
        "syntax",
        "used-before-defined",
        "undefined-name",
        "star-import",
        "execution-order",
        "absolute-path",
        "absolute-path-in-project",
        "pip-install",
        "shell-command",
        "magic",
        "network-read",
        "random-unseeded",
        "random-seed-hardcoded",
        "hardcoded-secret",
    }
    traps = [c for c in CASES if not c.expect and not c.skipped]
    assert len(traps) >= 15  # clean notebooks holding what earlier versions misreported


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Case, case_results: dict[str, LintReport]) -> None:
    report = case_results[case.name]
    assert isinstance(report, LintReport), report
    assert bool(report.skipped) == case.skipped, report.skipped
    assert found(report) == case.expected(), f"{case.pattern}\n{render_report(report)}"


def test_case_set_precision_and_recall(case_results: dict[str, LintReport]) -> None:
    """Over all cases: error findings that are planted defects (precision), and planted
    defects found with their rule, severity and cell (recall)."""
    errors = correct_errors = planted = recalled = 0
    misses = []
    for case in CASES:
        report = case_results[case.name]
        got = found(report) if isinstance(report, LintReport) else set()
        expected = case.expected()
        reported_errors = {f for f in got if f[1] == "error"}
        errors += len(reported_errors)
        correct_errors += len(reported_errors & expected)
        planted += len(expected)
        recalled += len(got & expected)
        misses += [(case.name, f) for f in (got ^ expected)]
    precision, recall = correct_errors / errors, recalled / planted
    print(f"lint case set: precision {precision:.3f} over {errors} errors, recall {recall:.3f}")
    assert precision >= 0.95, misses
    assert recall >= 0.95, misses


# --------------------------------------------------------------------------- bundled notebooks


@pytest.mark.parametrize("name", ["prepare.ipynb", "train.ipynb"])
def test_bundled_notebooks_lint_clean(name: str) -> None:
    report = lint_notebook(ROOT / "notebooks" / name)
    assert report.findings == [], render_report(report)


def test_clean_tiny_notebook_has_no_findings(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path,
        "import numpy as np\nrng = np.random.default_rng(seed)\nvalues = rng.normal(size=3)",
        "total = float(values.sum())",
    )
    report = lint_notebook(path)
    assert report.findings == []
    assert "no problems found" in render_report(report)


# --------------------------------------------------------------------------- parameters, --fix


def test_missing_parameters_cell_is_an_error_that_names_the_fix(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "import os", 'output_dir = "out"\nrate = 0.5', params=None)
    before = path.read_bytes()
    report = lint_notebook(path)
    missing = [f for f in report.findings if f.rule == "parameters-missing"]
    assert len(missing) == 1 and missing[0].severity == "error" and missing[0].cell is None
    assert "property inspector" in missing[0].fix and "--fix` tags cell 1" in missing[0].fix
    assert path.read_bytes() == before  # without --fix nothing is written


def test_fix_tags_first_assignment_cell_and_preserves_everything_else(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "import os", 'output_dir = "out"\nrate = 0.5', params=None)
    before = json.loads(path.read_text())
    report = lint_notebook(path, fix=True)
    after = json.loads(path.read_text())
    assert after["cells"][1]["metadata"]["tags"] == ["parameters"]
    del after["cells"][1]["metadata"]["tags"]
    assert after == before
    assert report.fixed and "tagged cell 1" in report.fixed[0]
    assert "output_dir, rate" in report.fixed[0]
    assert "parameters-missing" not in rules(report)
    assert ("parameters-not-first", "warning", 0) not in found(report)  # imports may stay above
    assert lint_notebook(path).findings == report.findings
    assert leftovers(tmp_path) == []


def test_fix_leaves_defaults_that_come_after_real_work_and_says_why(tmp_path: Path) -> None:
    work = [f"step_{i} = len(str({i})) * 2" for i in range(136)]
    path = write_notebook(tmp_path, *work, 'output_dir = "out"\nrate = 0.5', params=None)
    before = path.read_bytes()
    report = lint_notebook(path, fix=True)
    assert path.read_bytes() == before and report.fixed == []
    (missing,) = report.errors
    assert "cell 136 holds only assignments but runs after code (cell 0)" in missing.fix


def test_fix_without_candidate_changes_nothing(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "import os\nx = os.getcwd()", params=None)
    before = path.read_bytes()
    report = lint_notebook(path, fix=True)
    assert path.read_bytes() == before and report.fixed == []
    assert "no cell before the first real work" in report.errors[0].fix


def test_tags_given_as_a_string_are_found_and_fixed(tmp_path: Path) -> None:
    case = Case(
        "string_tags",
        "",
        [Code('output_dir = "out"\nseed = 1', tags="parameters"), "print(output_dir, seed)"],
        params=None,
    )
    path = write_case(case, tmp_path)
    report = lint_notebook(path)
    assert found(report) == {("parameters-tags-not-list", "warning", 0)}
    fixed = lint_notebook(path, fix=True)
    assert fixed.findings == [] and "as a list ['parameters']" in fixed.fixed[0]
    assert json.loads(path.read_text())["cells"][0]["metadata"]["tags"] == ["parameters"]
    assert nbformat.validate(nbformat.read(path, as_version=4)) is None


def test_fix_keeps_a_lone_surrogate_and_leaves_no_temp_file(tmp_path: Path) -> None:
    case = Case(
        "surrogate",
        "",
        ['output_dir = "out"\nlabel = "half \ud83d emoji"', "print(label)"],
        params=None,
    )
    path = write_case(case, tmp_path)
    report = lint_notebook(path, fix=True)
    assert report.fixed and report.findings == []
    text = path.read_text(encoding="utf-8")
    assert "\\ud83d" in text and text.isascii()
    assert json.loads(text)["cells"][0]["metadata"]["tags"] == ["parameters"]
    assert leftovers(tmp_path) == []


def test_fix_that_cannot_write_changes_nothing_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A 246-character name: the notebook fits, its temp file's longer name does not.
    name = "n" * 240 + ".ipynb"
    path = write_notebook(tmp_path, 'output_dir = "out"', params=None, end=None, name=name)
    before = path.read_bytes()
    with pytest.raises(NotebookWriteError, match="the file is unchanged"):
        lint_notebook(path, fix=True)
    assert path.read_bytes() == before and leftovers(tmp_path) == []
    assert main(["lint", str(path), "--fix"]) == 1  # an error, not a usage error
    assert "could not write" in capsys.readouterr().err


def test_parameters_cell_must_hold_plain_literal_assignments(tmp_path: Path) -> None:
    bad = write_notebook(
        tmp_path / "bad",
        params='from pathlib import Path\noutput_dir = str(Path("out"))\na, b = 1, 2\n'
        "pair = (1, 2)\nseed = 7\nprint(seed)",
    )
    report = lint_notebook(bad)
    lines = sorted(f.line for f in report.findings if f.rule == "parameters-not-literal")
    assert lines == [2, 3, 4, 6]  # the import on line 1 is fine
    good = write_notebook(
        tmp_path / "good",
        params='"""Inputs."""\nimport os\noutput_dir = "out"\nseed: int = 7\nrate = -0.5\n'
        'flag = True\nnames = ["a"]\nopts = {"k": [1, 2]}\nmaybe = None  # a comment',
    )
    assert lint_notebook(good).findings == []


# --------------------------------------------------------------------------- generic (ruff)


SCOPING_OK = {
    "imports": "import os.path\nimport numpy as np\nfrom json import dumps as d\nos, np, d",
    "function": "def f(a, *args, k=seed, **kw):\n    b = a + k\n    return later(b, args, kw)\n"
    "def later(*a):\n    return a\nf(1)",
    "class": "class C:\n    a = 1\n    b = a + 1\n    def m(self):\n        return C, self\n"
    "C().m()",
    "comprehensions": "xs = [y * 2 for y in range(3) if y]\nd = {k: v for k, v in zip(xs, xs)}",
    "with_except_walrus": "try:\n    pass\nexcept (OSError, ValueError) as err:\n    print(err)\n"
    "if (n := 3) > 2:\n    print(n)",
    "global_in_function": "def setup():\n    global CONFIG\n    CONFIG = 1\nsetup()\nprint(CONFIG)",
    "match": "match [1, 2]:\n    case [first, *rest]:\n        print(first, rest)",
    "time_cell_magic": "%%time\nresult = sum(range(3))\nprint(result)",
    "time_line_magic": "%time result = sum(range(3))\nprint(result)",
    "ipython_names": "display(len([1]))\nip = get_ipython()\nprint(In, Out, _, __name__, _i, _3)",
}


@pytest.mark.parametrize("snippet", SCOPING_OK.values(), ids=SCOPING_OK.keys())
def test_names_defined_as_python_defines_them(tmp_path: Path, snippet: str) -> None:
    report = lint_notebook(write_notebook(tmp_path, snippet))
    assert report.findings == [], render_report(report)


SCOPING_BAD = {
    "comprehension_var_does_not_leak": ("xs = [y for y in range(3)]\nprint(y)", "y"),
    "class_scope_invisible_in_method": (
        "class C:\n    a = 1\n    def m(self):\n        return a",
        "a",
    ),
    "augmented_needs_prior_value": ("count += 1", "count"),
    "function_local_does_not_leak": ("def f():\n    inner = 1\nf()\nprint(inner)", "inner"),
    "function_body_name_nowhere": ("def f():\n    return nowhere\n", "nowhere"),
}


@pytest.mark.parametrize(("snippet", "name"), SCOPING_BAD.values(), ids=list(SCOPING_BAD.keys()))
def test_undefined_names_come_from_ruff(tmp_path: Path, snippet: str, name: str) -> None:
    report = lint_notebook(write_notebook(tmp_path, snippet))
    assert [f.rule for f in report.findings] == ["undefined-name"], render_report(report)
    assert f"`{name}`" in report.findings[0].message and report.findings[0].cell == 1


def test_used_before_defined_names_where(tmp_path: Path) -> None:
    report = lint_notebook(write_notebook(tmp_path, "total = base * 2", "base = 21"))
    assert found(report) == {("used-before-defined", "error", 1)}
    assert "in cell 2" in report.findings[0].message and report.findings[0].line == 1
    same_cell = lint_notebook(write_notebook(tmp_path / "b", "print(x)\nx = 1"))
    assert "later in this cell" in same_cell.findings[0].message


def test_unparseable_cell_is_reported_with_its_number_and_line(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "foo = 1\ndef f(:\n    pass", "print(foo)")
    report = lint_notebook(path)
    assert found(report) == {("syntax", "error", 1)}
    assert report.findings[0].line == 2


def test_cell_numbers_count_markdown_cells(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "print(missing)")
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("# Title"))
    nbformat.write(nb, path)
    report = lint_notebook(path)
    assert found(report) == {("undefined-name", "error", 2)}
    assert "cell 2, line 1: error [undefined-name]" in render_report(report)
    assert "cells numbered from 0, markdown included" in render_report(report)


def test_ruff_is_the_venvs_and_reports_its_failures() -> None:
    binary = ruff_binary()
    assert binary is not None and Path(binary).is_file()
    with pytest.raises(RuntimeError, match="ruff could not read the notebook"):
        run_ruff("{not a notebook")


# --------------------------------------------------------------------------- code rules


def test_installs_and_shell_commands_are_errors(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path,
        "%pip install pandas",
        "!pip install scikit-learn",
        "!ls -la",
        "files = !ls\nprint(files)",
        "%%bash\necho hello",
        "%sx date",
        "import subprocess, sys\nsubprocess.run([sys.executable, '-m', 'pip', 'install', 'x'])",
    )
    assert found(lint_notebook(path)) == {
        ("pip-install", "error", 1),
        ("pip-install", "error", 2),
        ("shell-command", "error", 3),
        ("shell-command", "error", 4),
        ("shell-command", "error", 5),
        ("shell-command", "error", 6),
        ("pip-install", "error", 7),
    }


def test_code_inside_time_cells_is_checked(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "%%time\nimport numpy as np\nv = np.random.rand(3)")
    report = lint_notebook(path)
    assert found(report) == {("random-unseeded", "error", 1)}
    assert report.findings[0].line == 3


def test_absolute_path_messages_name_the_project(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    path = write_notebook(tmp_path / "notebooks", "a = open('/etc/hosts')\nb = f'/mnt/{a}.csv'")
    report = lint_notebook(path)
    assert [(f.rule, f.line) for f in report.findings] == [
        ("absolute-path", 1),
        ("absolute-path", 2),
    ]
    assert str(tmp_path) in report.findings[0].message


def test_estimators_are_asked_whether_random_state_matters() -> None:
    import numpy as np

    linear = estimator_object("sklearn.linear_model.LogisticRegression")
    forest = estimator_object("sklearn.ensemble.RandomForestClassifier")
    boosting = estimator_object("sklearn.ensemble.HistGradientBoostingClassifier")
    np.random.seed(5)
    state = np.random.get_state()[1].copy()
    assert random_state_use(linear()).verdict == "unused"
    assert random_state_use(linear(solver="saga")).verdict == "uses"
    assert random_state_use(forest(n_estimators=5)).verdict == "uses"
    answer = random_state_use(boosting())
    assert answer.verdict == "large-data" and "early_stopping='auto'" in answer.detail
    assert (np.random.get_state()[1] == state).all()  # the global generator is left alone
    assert estimator_object("os.system") is None  # only estimator libraries are imported


def test_sklearn_relying_on_global_numpy_seed_warns(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path,
        "import numpy as np\nfrom sklearn.cluster import KMeans\nnp.random.seed(seed)\nKMeans(2)",
    )
    assert found(lint_notebook(path)) == {("random-unseeded", "warning", 1)}


def test_hardcoded_seed_without_parameter_warns(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path,
        "import numpy as np\nrng = np.random.default_rng(0)\nrng2 = np.random.default_rng(1)",
        params='output_dir = "out"',
    )
    report = lint_notebook(path)
    assert found(report) == {("random-seed-hardcoded", "warning", 1)}
    assert "add `seed = 42` to the parameters cell" in report.findings[0].fix


def test_output_dir_parameter_is_required(tmp_path: Path) -> None:
    bad = write_notebook(tmp_path / "bad", "x = 1", params="seed = 7", end="print(x)")
    assert found(lint_notebook(bad)) == {("output-dir-missing", "error", 0)}


# --------------------------------------------------------------------------- API and CLI


def test_report_to_dict_is_json(tmp_path: Path) -> None:
    report = lint_notebook(write_notebook(tmp_path, "print(nowhere)"))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["errors"] == 1 and data["warnings"] == 0
    assert data["skipped"] is None
    assert data["findings"][0] == {
        "rule": "undefined-name",
        "severity": "error",
        "cell": 1,
        "line": 1,
        "message": report.findings[0].message,
        "fix": report.findings[0].fix,
    }


def test_unreadable_notebooks_raise_lint_error(tmp_path: Path) -> None:
    with pytest.raises(LintError, match="not found"):
        lint_notebook(tmp_path / "missing.ipynb")
    (tmp_path / "bad.ipynb").write_text("{not json")
    with pytest.raises(LintError, match="not valid .ipynb JSON"):
        lint_notebook(tmp_path / "bad.ipynb")
    (tmp_path / "latin.ipynb").write_bytes(b'{"cells": [], "x": "caf\xe9"}')
    with pytest.raises(LintError, match="not UTF-8"):
        lint_notebook(tmp_path / "latin.ipynb")
    (tmp_path / "old.ipynb").write_text('{"nbformat": 3, "worksheets": []}')
    with pytest.raises(LintError, match="nbformat 4"):
        lint_notebook(tmp_path / "old.ipynb")


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nbprod")
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_exit_status_clean_findings_and_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_notebook(tmp_path / "good", "x = 1")
    assert main(["lint", str(good)]) == 0
    assert "no problems found" in capsys.readouterr().out
    warned = write_notebook(tmp_path / "warned", "from math import *\nprint(pi)")
    assert main(["lint", str(warned)]) == 0  # warnings alone do not fail
    bad = write_notebook(tmp_path / "bad", "print(nowhere)")
    assert main(["lint", str(bad)]) == 1
    assert "cell 1, line 1: error [undefined-name]" in capsys.readouterr().out
    assert main(["lint", str(bad), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["errors"] == 1
    assert main(["lint", str(tmp_path / "missing.ipynb")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["lint", str(tmp_path / "missing.ipynb"), "--json"]) == 2
    assert "not found" in json.loads(capsys.readouterr().out)["error"]


def test_cli_skips_a_non_python_notebook_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r_case = next(c for c in CASES if c.name == "r_kernel")
    path = write_case(r_case, tmp_path)
    assert main(["lint", str(path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [
        f"{path}: skipped: a R notebook (kernel ir): nbprod lint checks Python notebooks only"
    ]
    assert main(["lint", str(path), "--json"]) == 0
    assert "R notebook" in json.loads(capsys.readouterr().out)["skipped"]


def test_cli_lint_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_notebook(tmp_path, 'output_dir = "out"', params=None)
    assert run_cli(["lint", str(path), "--fix"]) == 0
    out = capsys.readouterr().out
    assert "fixed: tagged cell 0 as 'parameters' (output_dir)" in out
    assert "parameters" in nbformat.read(path, as_version=4).cells[0].metadata["tags"]


def test_cli_repro_rejects_a_single_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_cli(["repro", "x.ipynb", "--runs", "1"])
    assert "at least 2 runs" in capsys.readouterr().err


def test_case_notebooks_are_valid_nbformat(tmp_path: Path) -> None:
    """Every case is a notebook Jupyter opens, except the one whose tags are a string."""
    for case in CASES:
        if any(isinstance(c, Code) and isinstance(c.tags, str) for c in case.cells):
            continue
        nbformat.validate(nbformat.reads(notebook_json(case, tmp_path), as_version=4))


def test_registering_commands_imports_nothing_heavy() -> None:
    heavy = ("prefect", "evidently", "bentoml", "papermill", "pandas", "sklearn", "IPython")
    code = (
        "import sys, argparse\nfrom flows.lint import register_commands\n"
        "p = argparse.ArgumentParser()\nregister_commands(p.add_subparsers())\np.format_help()\n"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_lint_modules_are_small_and_import_only_public_names() -> None:
    package = Path(flows.lint.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert len(modules) > 1
    assert not (package / "sklearn_signatures.py").exists() and not (package / "scope.py").exists()
    for module in modules:
        text = module.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 500, f"{module.name} is over 500 lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flows"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{module.name} imports {private} from {node.module}"
