"""Real kernels via papermill: outputs read back, failures kept and marked, dead kernels retried."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from notebook_files import parameterized_notebook

from flows.errors import NotebookExecutionError, ParameterError
from flows.notebook import execute_notebook

pytestmark = pytest.mark.integration

BODY = """
import json, os, pathlib
out = pathlib.Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
with open(attempts, "a") as fh:
    fh.write("x\\n")
n_attempts = len(pathlib.Path(attempts).read_text().splitlines())
if mode == "die_once" and n_attempts == 1:
    os._exit(1)
if mode == "raise":
    raise ValueError("bad value in cell")
(out / "result.txt").write_text(str(value * 2))
(out / "outputs.json").write_text(json.dumps({
    "outputs": {"result": "result.txt"}, "metrics": {"double": value * 2.0}, "values": {}}))
"""


def make_notebook(
    tmp_path: Path,
    body: str = BODY,
    parameters: str = 'value = 1\nmode = "ok"\nattempts = "attempts.txt"\noutput_dir = "out"',
    name: str = "step.ipynb",
) -> Path:
    return parameterized_notebook(tmp_path / name, parameters, body)


def params(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {
        "attempts": str(tmp_path / "attempts.txt"),
        "output_dir": str(tmp_path / "out"),
        **extra,
    }


def test_execute_writes_executed_copy_and_html(tmp_path: Path) -> None:
    nb = make_notebook(tmp_path)
    executed = tmp_path / "run" / "step.ipynb"
    execute_notebook(nb, executed, params(tmp_path, value=21))
    assert (tmp_path / "out" / "result.txt").read_text() == "42"
    assert executed.exists() and executed.with_suffix(".html").exists()
    injected = nbformat.read(executed, as_version=4).cells[1]
    assert "injected-parameters" in injected.metadata.get("tags", [])


def test_cell_error_names_cell_and_keeps_marked_copy(tmp_path: Path) -> None:
    nb = make_notebook(tmp_path)
    executed = tmp_path / "run" / "step.ipynb"
    with pytest.raises(
        NotebookExecutionError, match=r"step.ipynb failed in cell In \[\d+\].*ValueError: bad value"
    ) as info:
        execute_notebook(nb, executed, params(tmp_path, mode="raise"))
    assert info.value.executed_path == str(executed)
    kept = nbformat.read(executed, as_version=4)
    assert any("papermill-error-cell-tag" in c.metadata.get("tags", []) for c in kept.cells)
    assert "bad value in cell" in executed.with_suffix(".html").read_text()


def test_wrong_parameter_type_rejected_before_kernel_starts(tmp_path: Path) -> None:
    nb = make_notebook(tmp_path)
    with pytest.raises(ParameterError, match="parameter 'value' expects int"):
        execute_notebook(nb, tmp_path / "run.ipynb", params(tmp_path, value="21"))
    assert not (tmp_path / "attempts.txt").exists()  # no kernel ever ran the notebook


def test_task_retries_a_dead_kernel_but_not_a_cell_error(
    tmp_path: Path, prefect_server: None
) -> None:
    from prefect import flow

    from flows.execution import run_notebook

    nb = make_notebook(tmp_path)

    @flow
    def one_step(mode: str, attempts: str) -> float:
        got = run_notebook(
            "step",
            nb,
            tmp_path / f"{mode}.ipynb",
            {**params(tmp_path, value=5, mode=mode), "attempts": attempts},
            kernel_name="python3",
            timeout_s=120,
        )
        assert got.outputs == {"result": tmp_path / "out" / "result.txt"}
        return got.metrics["double"]

    died = tmp_path / "died.txt"
    assert one_step("die_once", str(died)) == 10.0
    assert len(died.read_text().splitlines()) == 2  # first kernel died, the retry succeeded

    raised = tmp_path / "raised.txt"
    with pytest.raises(NotebookExecutionError):
        one_step("raise", str(raised))
    assert len(raised.read_text().splitlines()) == 1  # a cell error is not retried


def test_a_cached_call_is_marked_complete_only_once_its_notebook_finished(
    tmp_path: Path, prefect_server: None
) -> None:
    """The marker next to a cached call's outputs says the folder is whole (flows.execution)."""
    from prefect import flow

    from flows.calls import COMPLETE_MARKER
    from flows.execution import run_notebook

    nb = make_notebook(tmp_path)
    out = tmp_path / "cache" / "outputs"
    marker = out.parent / COMPLETE_MARKER

    @flow
    def cached_step(mode: str, key: str) -> None:
        run_notebook.with_options(refresh_cache=True)(
            "step",
            nb,
            tmp_path / "cache" / "executed" / "step.ipynb",
            {**params(tmp_path, value=4, mode=mode), "output_dir": str(out)},
            kernel_name="python3",
            timeout_s=120,
            cache_key=key,
        )

    cached_step("ok", "key-1")
    assert marker.read_text() == "key-1" and (out / "result.txt").read_text() == "8"
    (out / "stale.txt").write_text("from an earlier execution")
    with pytest.raises(NotebookExecutionError):
        cached_step("raise", "key-2")
    assert not marker.exists()  # a failed execution never leaves a folder marked complete
    assert not (out / "stale.txt").exists() and not (out / "result.txt").exists()


def test_kernels_started_in_parallel_do_not_race(tmp_path: Path) -> None:
    """Ports come from a machine-wide reservation registry: parallel starts cannot collide."""
    from concurrent.futures import ThreadPoolExecutor

    nb = make_notebook(tmp_path)

    def run(i: int) -> str:
        out = tmp_path / f"out{i}"
        execute_notebook(
            nb,
            tmp_path / f"run{i}.ipynb",
            {"value": i, "attempts": str(tmp_path / f"a{i}.txt"), "output_dir": str(out)},
        )
        return (out / "result.txt").read_text()

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(run, range(6)))
    assert results == [str(i * 2) for i in range(6)]
    executed = nbformat.read(tmp_path / "run0.ipynb", as_version=4)
    assert executed.metadata["papermill"]["exception"] is None


THREADS_BODY = """
import os, pathlib
pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(output_dir, "threads.txt").write_text(os.environ.get("OMP_NUM_THREADS", "unset"))
"""


@pytest.mark.parametrize(
    ("cores", "running", "expected"), [(2, 1, 2), (2, 4, 1), (8, 3, 2), (1, 0, 1), (16, 2, 8)]
)
def test_kernels_running_at_once_share_the_cores(cores: int, running: int, expected: int) -> None:
    from flows.notebook import kernel_threads

    assert kernel_threads(cores, running) == expected


def test_kernel_gets_its_share_of_threads_unless_the_user_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from flows.kernels import THREAD_VARIABLES

    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    nb = make_notebook(tmp_path, THREADS_BODY, 'output_dir = "out"', "threads.ipynb")
    out = tmp_path / "alone"
    execute_notebook(nb, tmp_path / "a.ipynb", {"output_dir": str(out)})
    assert (out / "threads.txt").read_text() == str(os.cpu_count() or 1)  # one kernel: all cores

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    out = tmp_path / "chosen"
    execute_notebook(nb, tmp_path / "b.ipynb", {"output_dir": str(out)})
    assert (out / "threads.txt").read_text() == "3"


def test_html_copy_matches_nbconvert_html_exporter(tmp_path: Path) -> None:
    """render_html is nbconvert's HTMLExporter (one kept per process, quiet about alt text)."""
    import base64

    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter

    from flows.notebook import render_html

    png = base64.b64encode(bytes.fromhex("89504e470d0a1a0a")).decode()
    nb = nbformat.v4.new_notebook()
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title\n\nSome *text* <img src='x.png'>"),
        nbformat.v4.new_code_cell(
            "print('hello')\nx = {'a': 1}",
            outputs=[
                nbformat.v4.new_output("stream", name="stdout", text="hello\n"),
                nbformat.v4.new_output(
                    "display_data", data={"image/png": png, "text/plain": "<Figure>"}
                ),
                nbformat.v4.new_output(
                    "execute_result",
                    data={"text/html": "<table><tr><td>1</td></tr></table>", "text/plain": "1"},
                    execution_count=1,
                ),
            ],
        ),
        nbformat.v4.new_code_cell(
            "1 / 0",
            outputs=[
                nbformat.v4.new_output(
                    "error", ename="ZeroDivisionError", evalue="division by zero", traceback=[]
                )
            ],
        ),
    ]
    ipynb = tmp_path / "page.ipynb"
    nbformat.write(nb, ipynb)

    ours = BeautifulSoup(render_html(ipynb).read_text(), "html.parser")
    theirs = BeautifulSoup(HTMLExporter().from_notebook_node(nb)[0], "html.parser")
    assert ours.get_text() == theirs.get_text()
    assert len(ours.select('[tabindex="0"]')) == len(theirs.select('[tabindex="0"]')) >= 4
    assert [img.get("alt") for img in ours.select("img")] == [
        img.get("alt") for img in theirs.select("img")
    ]
    assert all(img.get("alt") for img in ours.select("img"))


def test_the_html_warm_up_leaves_no_import_a_notebook_run_needs_to_its_thread() -> None:
    """A flow queues the HTML warm-up (nbconvert, which imports nbclient and jupyter_client) and
    then runs notebooks (papermill, and the kernel start, import the same). Two threads importing
    those at once give one of them a half-initialised module, so they are imported by the caller
    before the warm-up thread starts on nbconvert."""
    import json
    import subprocess
    import sys

    driver = (
        "import json, sys\n"
        "from flows.notebook import warm_up_html_rendering\n"
        "names = ['papermill', 'nbclient', 'jupyter_client.manager']\n"
        "before = [n in sys.modules for n in names]\n"
        "warm_up_html_rendering()\n"
        "print(json.dumps([before, [n in sys.modules for n in names]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [[False] * 3, [True] * 3]
