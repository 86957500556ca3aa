"""`nbprod lint`: every rule with a notebook that breaks it and one that does not (no kernels)."""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import flows.lint
from flows.errors import LintError
from flows.lint import LintReport, lint_notebook, register_commands, render_report

ROOT = Path(__file__).resolve().parent.parent
PARAMS = 'output_dir = "out"\nseed = 7'
WRITE_OUTPUTS = (
    "import json, pathlib\n"
    'pathlib.Path(output_dir, "outputs.json").write_text(json.dumps({"outputs": {}}))'
)


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


def found(report: LintReport) -> set[tuple[str, str, int | None]]:
    return {(f.rule, f.severity, f.cell) for f in report.findings}


def rules(report: LintReport) -> set[str]:
    return {f.rule for f in report.findings}


# --------------------------------------------------------------------------- bundled notebooks


@pytest.mark.parametrize("name", ["prepare.ipynb", "train.ipynb"])
def test_bundled_notebooks_lint_clean(name: str) -> None:
    report = lint_notebook(ROOT / "notebooks" / name)
    assert report.errors == [], render_report(report)
    assert report.ok


def test_clean_tiny_notebook_has_no_findings(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path,
        "import numpy as np\nrng = np.random.default_rng(seed)\nvalues = rng.normal(size=3)",
        "total = float(values.sum())",
    )
    report = lint_notebook(path)
    assert report.findings == []
    assert "no problems found" in render_report(report)


# --------------------------------------------------------------------------- parameters


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
    assert (
        report.fixed
        and "tagged cell 1" in report.fixed[0]
        and "output_dir, rate" in (report.fixed[0])
    )
    assert "parameters-missing" not in rules(report)
    assert ("parameters-not-first", "warning", 0) not in found(report)  # imports may stay above
    assert lint_notebook(path).findings == report.findings


def test_fix_without_candidate_changes_nothing(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "import os\nx = os.getcwd()", params=None)
    before = path.read_bytes()
    report = lint_notebook(path, fix=True)
    assert path.read_bytes() == before and report.fixed == []
    assert "no cell consists only of plain assignments" in report.errors[0].fix


def test_parameters_cell_must_hold_plain_literal_assignments(tmp_path: Path) -> None:
    bad = write_notebook(
        tmp_path / "bad",
        params='from pathlib import Path\noutput_dir = str(Path("out"))\na, b = 1, 2\n'
        "pair = (1, 2)\nseed = 7",
    )
    report = lint_notebook(bad)
    lines = sorted(f.line for f in report.findings if f.rule == "parameters-not-literal")
    assert lines == [1, 2, 3, 4]
    assert all(f.severity == "error" and f.cell == 0 for f in report.errors)
    good = write_notebook(
        tmp_path / "good",
        params='output_dir = "out"\nseed: int = 7\nrate = -0.5\nflag = True\nnames = ["a"]\n'
        'opts = {"k": [1, 2]}\nmaybe = None  # a comment',
    )
    assert lint_notebook(good).findings == []


def test_second_parameters_cell_and_code_above_it_are_warnings(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "x = 1", "y = 2", params=None, end=None)
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.cells.insert(0, nbformat.v4.new_code_cell("import os\n%matplotlib inline"))
    nb.cells.insert(1, nbformat.v4.new_code_cell("z = 3"))
    nb.cells.insert(2, nbformat.v4.new_code_cell(PARAMS))
    nb.cells[2].metadata["tags"] = ["parameters"]
    nb.cells.append(nbformat.v4.new_code_cell(WRITE_OUTPUTS))
    nbformat.write(nb, path)
    report = lint_notebook(path)
    assert found(report) == {
        ("parameters-not-first", "warning", 1),
        ("parameters-multiple", "warning", 4),
    }


# --------------------------------------------------------------------------- hidden state


def test_out_of_order_execution_counts_warn(tmp_path: Path) -> None:
    bad = write_notebook(tmp_path / "bad", "a = 1", "b = a", counts=[1, 3, 2, 4])
    assert found(lint_notebook(bad)) == {("execution-order", "warning", 2)}
    good = write_notebook(tmp_path / "good", "a = 1", "b = a", counts=[1, 2, None, 7])
    assert lint_notebook(good).findings == []


def test_name_used_before_a_later_cell_defines_it(tmp_path: Path) -> None:
    bad = write_notebook(tmp_path / "bad", "total = base * 2", "base = 21")
    report = lint_notebook(bad)
    assert found(report) == {("used-before-defined", "error", 1)}
    assert "in cell 2" in report.findings[0].message and report.findings[0].line == 1
    good = write_notebook(tmp_path / "good", "base = 21", "total = base * 2")
    assert lint_notebook(good).findings == []


def test_name_used_before_later_line_or_after_del(tmp_path: Path) -> None:
    same_cell = write_notebook(tmp_path / "a", "print(x)\nx = 1")
    report = lint_notebook(same_cell)
    assert found(report) == {("used-before-defined", "error", 1)}
    assert "later in this cell" in report.findings[0].message
    deleted = write_notebook(tmp_path / "b", "x = 1", "del x", "print(x)")
    report = lint_notebook(deleted)
    assert found(report) == {("used-before-defined", "error", 3)}
    assert "del x" in report.findings[0].message
    conditional = write_notebook(tmp_path / "c", "x = 1\nif seed > 100:\n    del x", "print(x)")
    assert lint_notebook(conditional).findings == []


def test_name_no_cell_defines(tmp_path: Path) -> None:
    bad = write_notebook(tmp_path / "bad", "print(leftover_from_old_session)")
    report = lint_notebook(bad)
    assert found(report) == {("undefined-name", "error", 1)}
    assert "parameters cell" in report.findings[0].fix
    good = write_notebook(
        tmp_path / "good",
        "display(len([1]))\nip = get_ipython()\nprint(In, Out, _, __name__, _i, _3)",
    )
    assert lint_notebook(good).findings == []


def test_injected_parameters_count_as_defined(tmp_path: Path) -> None:
    """A papermill-executed copy: the injected cell after the parameters cell defines names."""
    path = write_notebook(tmp_path, "print(output_dir, seed)")
    nb = nbformat.read(path, as_version=4)
    injected = nbformat.v4.new_code_cell('output_dir = "out2"\nseed = 1')
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(1, injected)
    nbformat.write(nb, path)
    assert lint_notebook(path).findings == []


SCOPING_OK = {
    "imports": "import os.path\nimport numpy as np\nfrom json import dumps as d\nos, np, d",
    "function": "def f(a, *args, k=seed, **kw):\n    b = a + k\n    return later(b, args, kw)\n"
    "def later(*a):\n    return a\nf(1)",
    "recursion_and_closure": "def outer():\n    n = 1\n    def inner():\n        nonlocal n\n"
    "        n += 1\n        return outer, n\n    return inner",
    "class": "class C:\n    a = 1\n    b = a + 1\n    def m(self):\n        return C, self\n"
    "C().m()",
    "for_targets": "for i, (j, *k) in enumerate([(1, 2, 3)]):\n    print(i, j, k)\nelse:\n"
    "    print(i)",
    "comprehensions": "xs = [y * 2 for y in range(3) if y]\nd = {k: v for k, v in zip(xs, xs)}\n"
    "g = sum(a * b for a in xs for b in range(a))\ns = {z for z in xs}",
    "with_except_walrus": "with open(output_dir) as fh, open(output_dir) as gh:\n    pass\n"
    "try:\n    fh\nexcept (OSError, ValueError) as err:\n    print(err)\n"
    "if (n := 3) > 2:\n    print(n)\nys = [m for x in range(3) if (m := x)]\nprint(m)",
    "augmented_and_annotated": "total = 0\ntotal += 1\nlabel: str = 'a'\nlabel += 'b'",
    "global_in_function": "def setup():\n    global CONFIG\n    CONFIG = 1\nsetup()\nprint(CONFIG)",
    "lambda_and_match": "key = lambda row, w=2: row * w\nmatch [1, 2]:\n"
    "    case [first, *rest]:\n        print(first, rest)\n    case {'a': a, **others}:\n"
    "        print(a, others)\n    case str() as text:\n        print(text)",
    "builtins": "print(len(range(3)), Exception, __builtins__, sorted, exit)",
    "time_cell_magic": "%%time\nresult = sum(range(3))",
    "capture_magic": "%%capture captured\nprint(1)",
}


@pytest.mark.parametrize("snippet", SCOPING_OK.values(), ids=SCOPING_OK.keys())
def test_scoping_defines_names(tmp_path: Path, snippet: str) -> None:
    uses = {
        "time_cell_magic": "print(result)",
        "capture_magic": "print(captured)",
    }
    cells = [snippet] + [use for key, use in uses.items() if SCOPING_OK[key] == snippet]
    report = lint_notebook(write_notebook(tmp_path, *cells))
    assert report.findings == [], render_report(report)


SCOPING_BAD = {
    "comprehension_var_does_not_leak": ("xs = [y for y in range(3)]\nprint(y)", "y"),
    "class_scope_invisible_in_method": (
        "class C:\n    a = 1\n    def m(self):\n        return a",
        "a",
    ),
    "augmented_needs_prior_value": ("count += 1", "count"),
    "function_local_does_not_leak": ("def f():\n    inner = 1\nf()\nprint(inner)", "inner"),
    "except_name_needs_binding": ("try:\n    pass\nexcept ValueError:\n    print(err)", "err"),
    "function_body_name_nowhere": ("def f():\n    return nowhere\n", "nowhere"),
    "annotation_without_value_binds_nothing": ("z: int\nprint(z)", "z"),
}


@pytest.mark.parametrize(("snippet", "name"), SCOPING_BAD.values(), ids=list(SCOPING_BAD.keys()))
def test_scoping_catches_undefined(tmp_path: Path, snippet: str, name: str) -> None:
    report = lint_notebook(write_notebook(tmp_path, snippet))
    assert [f.rule for f in report.findings] == ["undefined-name"], render_report(report)
    assert f"`{name}`" in report.findings[0].message


def test_star_import_warns_and_silences_undefined(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "from math import *\nprint(sqrt(2))")
    assert found(lint_notebook(path)) == {("star-import", "warning", 1)}


def test_unparseable_cell_is_reported_with_its_number(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "def f(:\n    pass\nfoo = 1", "print(foo)")
    report = lint_notebook(path)
    assert found(report) == {("syntax", "error", 1)}
    assert report.findings[0].line == 1


def test_cell_numbers_count_markdown_cells(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "print(missing)")
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("# Title"))
    nbformat.write(nb, path)
    report = lint_notebook(path)
    assert found(report) == {("undefined-name", "error", 2)}
    assert "cell 2, line 1: error [undefined-name]" in render_report(report)
    assert "cells numbered from 0, markdown included" in render_report(report)


# --------------------------------------------------------------------------- reproducibility


def test_installs_and_shell_commands_are_errors(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path,
        "%pip install pandas",
        "!pip install scikit-learn",
        "!ls -la",
        "files = !ls\nprint(files)",
        "%%bash\necho hello",
        "%sx date",
        "%system date",
    )
    assert found(lint_notebook(path)) == {
        ("pip-install", "error", 1),
        ("pip-install", "error", 2),
        ("shell-command", "error", 3),
        ("shell-command", "error", 4),
        ("shell-command", "error", 5),
        ("shell-command", "error", 6),
        ("shell-command", "error", 7),
    }


def test_display_magics_are_fine_and_state_magics_warn(tmp_path: Path) -> None:
    good = write_notebook(
        tmp_path / "good",
        "%matplotlib inline\n%load_ext autoreload\n%autoreload 2\n%config InlineBackend.x = 1",
        "%time y = 1\n%timeit -n1 -r1 sum([1])\nprint(y)",
    )
    assert lint_notebook(good).findings == []
    bad = write_notebook(tmp_path / "bad", "%env MODE=x", "%%writefile notes.txt\nhello")
    report = lint_notebook(bad)
    assert found(report) == {("magic", "warning", 1), ("magic", "warning", 2)}


def test_code_inside_time_cells_is_checked(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "%%time\nimport numpy as np\nv = np.random.rand(3)")
    report = lint_notebook(path)
    assert found(report) == {("random-unseeded", "error", 1)}
    assert report.findings[0].line == 3


def test_absolute_paths_outside_the_project_are_errors(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    inside = tmp_path / "data" / "x.csv"
    bad = write_notebook(
        tmp_path / "notebooks",
        "a = '/etc/hosts'\nb = '~/data.csv'\nc = 'C:\\\\data\\\\x.csv'\nd = f'/mnt/{a}.csv'",
        f"e = {str(inside)!r}",
        name="bad.ipynb",
    )
    report = lint_notebook(bad)
    outside = [f for f in report.findings if f.rule == "absolute-path"]
    assert [(f.cell, f.line, f.severity) for f in outside] == [
        (1, 1, "error"),
        (1, 2, "error"),
        (1, 3, "error"),
        (1, 4, "error"),
    ]
    assert str(tmp_path) in outside[0].message
    assert found(report) - {(f.rule, f.severity, f.cell) for f in outside} == {
        ("absolute-path-in-project", "warning", 2)
    }
    good = write_notebook(
        tmp_path / "notebooks",
        "a = '../data/x.csv'\nb = '/'.join(['a', 'b'])\nc = output_dir + '/x.csv'\n"
        "d = f'{output_dir}/y.csv'\ne = '//'\nf = 'a/b'",
        name="good.ipynb",
    )
    assert lint_notebook(good).findings == []


RANDOM_BAD = {
    "numpy_global": "import numpy as np\nnp.random.rand(3)",
    "numpy_global_from_import": "from numpy.random import normal\nnormal()",
    "default_rng_no_seed": "import numpy as np\nrng = np.random.default_rng()",
    "default_rng_none": "from numpy.random import default_rng\nrng = default_rng(None)",
    "stdlib_random": "import random\nrandom.shuffle([1, 2])",
    "numpy_seed_without_value": "import numpy as np\nnp.random.seed()",
    "train_test_split": "from sklearn.model_selection import train_test_split\n"
    "train_test_split([1, 2, 3, 4], test_size=0.5)",
    "estimator": "from sklearn.ensemble import RandomForestClassifier\n"
    "RandomForestClassifier(n_estimators=3)",
    "estimator_module_alias": "import sklearn.ensemble as ens\nens.ExtraTreesRegressor()",
    "kfold_shuffled": "from sklearn.model_selection import KFold\nKFold(3, shuffle=True)",
    "dataframe_sample": "import pandas as pd\npd.DataFrame({'a': [1, 2]}).sample(1)",
}
RANDOM_GOOD = {
    "rng_with_seed": "import numpy as np\nrng = np.random.default_rng(seed)\nrng.normal()",
    "global_seeded_first": "import numpy as np\nnp.random.seed(seed)\nnp.random.rand(3)",
    "stdlib_seeded": "import random\nrandom.seed(seed)\nrandom.random()",
    "stdlib_instance": "import random\nr = random.Random(seed)\nr.random()",
    "sklearn_with_random_state": "from sklearn.model_selection import train_test_split\n"
    "from sklearn.ensemble import HistGradientBoostingClassifier as H\n"
    "train_test_split([1, 2, 3, 4], random_state=seed)\nH(random_state=seed)",
    "sklearn_without_randomness": "from sklearn.impute import SimpleImputer\n"
    "from sklearn.model_selection import KFold\nSimpleImputer()\nKFold(3)",
    "sample_with_state": "import pandas as pd\n"
    "pd.DataFrame({'a': [1]}).sample(1, random_state=seed)",
}


@pytest.mark.parametrize("snippet", RANDOM_BAD.values(), ids=RANDOM_BAD.keys())
def test_unseeded_random_is_an_error(tmp_path: Path, snippet: str) -> None:
    report = lint_notebook(write_notebook(tmp_path, snippet))
    assert found(report) == {("random-unseeded", "error", 1)}, render_report(report)
    assert "seed" in report.findings[0].fix


@pytest.mark.parametrize("snippet", RANDOM_GOOD.values(), ids=RANDOM_GOOD.keys())
def test_seeded_random_is_fine(tmp_path: Path, snippet: str) -> None:
    report = lint_notebook(write_notebook(tmp_path, snippet))
    assert report.findings == [], render_report(report)


def test_hardcoded_seed_without_parameter_warns(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path,
        "import numpy as np\nrng = np.random.default_rng(0)\nrng2 = np.random.default_rng(1)",
        params='output_dir = "out"',
    )
    report = lint_notebook(path)
    assert found(report) == {("random-seed-hardcoded", "warning", 1)}
    assert "add `seed = 42` to the parameters cell" in report.findings[0].fix


def test_sklearn_relying_on_global_numpy_seed_warns(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path,
        "import numpy as np\nfrom sklearn.cluster import KMeans\nnp.random.seed(seed)\nKMeans(2)",
    )
    assert found(lint_notebook(path)) == {("random-unseeded", "warning", 1)}


def test_network_reads_are_errors(tmp_path: Path) -> None:
    bad = write_notebook(
        tmp_path / "bad",
        "import pandas as pd\ndf = pd.read_csv('https://example.com/x.csv')",
        "import pandas as pd\nURL = 's3://bucket/key.parquet'\ndf = pd.read_parquet(URL)",
        "import requests\nr = requests.get('http://example.com')",
        "from urllib.request import urlopen\nurlopen('http://example.com')",
    )
    report = lint_notebook(bad)
    assert found(report) == {("network-read", "error", cell) for cell in (1, 2, 3, 4)}
    good = write_notebook(
        tmp_path / "good",
        "import pandas as pd\nprint('docs: https://example.com')\n"
        "df = pd.read_csv('../data/x.csv')\nfrom urllib.parse import urlparse\n"
        "urlparse('https://example.com')",
    )
    assert lint_notebook(good).findings == []


def test_pip_install_through_subprocess_is_an_error(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path, "import subprocess, sys\nsubprocess.run([sys.executable, '-m', 'pip', 'install'])"
    )
    assert found(lint_notebook(path)) == {("pip-install", "error", 1)}


# --------------------------------------------------------------------------- outputs


def test_output_dir_parameter_is_required_and_outputs_json_is_not(tmp_path: Path) -> None:
    bad = write_notebook(tmp_path / "bad", "x = 1", params="seed = 7", end="print(x)")
    report = lint_notebook(bad)
    assert found(report) == {("output-dir-missing", "error", 0)}
    good = write_notebook(tmp_path / "good", "x = 1")
    assert lint_notebook(good).findings == []


def test_kernel_language_metadata_is_required(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "x = 1")
    nb = nbformat.read(path, as_version=4)
    del nb.metadata["kernelspec"]
    nbformat.write(nb, path)
    assert found(lint_notebook(path)) == {("kernel-metadata-missing", "error", None)}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, path)
    assert lint_notebook(path).findings == []


# --------------------------------------------------------------------------- API and CLI


def test_report_to_dict_is_json(tmp_path: Path) -> None:
    report = lint_notebook(write_notebook(tmp_path, "print(nowhere)"))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["errors"] == 1 and data["warnings"] == 0
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


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nbprod")
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_lint_exit_status_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_notebook(tmp_path / "good", "x = 1")
    assert run_cli(["lint", str(good)]) == 0
    assert "no problems found" in capsys.readouterr().out
    bad = write_notebook(tmp_path / "bad", "print(nowhere)")
    assert run_cli(["lint", str(bad)]) == 1
    assert "cell 1, line 1: error [undefined-name]" in capsys.readouterr().out
    assert run_cli(["lint", str(bad), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["errors"] == 1


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
    for module in modules:
        text = module.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 500, f"{module.name} is over 500 lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flows"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{module.name} imports {private} from {node.module}"
