"""A notebook's parameter check: cells re-run in any order pass, papermill's unknown or
mistyped values fail with a message that says what to write instead."""

from __future__ import annotations

import pytest

from clipkit.experiments import notebook as nb
from clipkit.experiments import sweep
from clipkit.experiments.notebook import ParameterError, injected_names, parameters

DECLARED = {"lam": "list[float]", "seed": "int", "method": "str"}
VALUES = {"lam": [0.1], "seed": 0, "method": "clip"}
PARAMETERS_CELL = 'lam: list[float] = [0.1]\nseed: int = 0\nmethod: str = "clip"'


def namespace(history: list[str], **values) -> dict:
    """A notebook's globals as IPython keeps them: annotations, values, the input history."""
    return {"__annotations__": dict(DECLARED), **VALUES, "In": ["", *history], **values}


def test_cells_rerun_in_any_order_pass():
    # a whole run defines many more names; then the parameters cell is edited and re-run
    history = ["import clipkit as ck", PARAMETERS_CELL, "params = ...", "E_const = 1.0\nL = 2",
               PARAMETERS_CELL.replace("seed: int = 0", "seed: int = 3"), "params = ..."]
    ns = namespace(history, seed=3, E_const=1.0, L=2, P=[1], x=object())
    assert parameters(ns) == {"lam": [0.1], "seed": 3, "method": "clip"}
    assert parameters(ns, {"ignored", "snapshot"}) == parameters(ns)  # the 0.1 signature


def test_papermill_injected_names_are_checked():
    injected = "# Parameters\nlam = [0.5]\nsed = 1\nPAPERMILL_INPUT_PATH = \"in.ipynb\"\n"
    assert injected_names(["x = 1", injected, "# Parameters is not this"]) == ["lam", "sed"]
    ns = namespace([PARAMETERS_CELL, injected], lam=[0.5], sed=1)
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) 'sed' \(injected by "
                                             r"papermill\).*did you mean 'seed' for 'sed'\?"):
        parameters(ns)
    fine = namespace([PARAMETERS_CELL, "# Parameters\nlam = [0.5]\nseed = 2\n"], lam=[0.5], seed=2)
    assert parameters(fine)["seed"] == 2


def test_a_single_value_for_a_list_says_how_to_pass_a_list():
    # papermill -p lam 0.1 injects a float; -p lam "[0.1]" injects the text
    for value in (0.1, "[0.1]"):
        with pytest.raises(ParameterError) as err:
            parameters(namespace(["# Parameters\nlam = ...\n"], lam=value))
        text = str(err.value)
        assert f"parameter 'lam' = {value!r} is a {type(value).__name__}; the notebook " \
               "declares list[float], accepted: a list of numbers" in text
        assert "papermill ... -y 'lam: [0.1]'" in text
    with pytest.raises(ParameterError, match="'seed' = '2' is a str.*an int") as err:
        parameters(namespace([], seed="2"))
    assert "-y" not in str(err.value)  # only lists get the hint


def test_a_sweep_says_how_to_write_a_list(tmp_path):
    import nbformat

    nb = tmp_path / "n.ipynb"
    cell = nbformat.v4.new_code_cell(PARAMETERS_CELL + '\nresult_path: str = ""',
                                     metadata={"tags": ["parameters"]})
    kernel = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(nbformat.v4.new_notebook(cells=[cell], metadata=kernel), nb)
    with pytest.raises(sweep.SweepError, match=r"'lam' \(fixed\) = 0.1 is a float; .* "
                                               r"accepted: a list of numbers; write a list, "
                                               r"e\.g\. lam: \[0\.1\]"):
        sweep.check({"notebook": str(nb), "fixed": {"lam": 0.1}})
    with pytest.raises(sweep.SweepError, match=r"each point gets one value of the grid, and a "
                                               r"grid value is a scalar .* put lam under "
                                               r"'fixed', or list it in 'batch' if"):
        sweep.check({"notebook": str(nb), "grid": {"lam": [0.1, 1.0]}})


@pytest.mark.slow
def test_in_a_kernel_rerunning_the_parameters_cell_works_and_injection_is_checked(tmp_path):
    """The same in a real IPython kernel: ``In`` and ``__annotations__`` as IPython keeps them."""
    from jupyter_client.manager import start_new_kernel

    from clipkit.experiments.sweep import prepare_kernel_env

    prepare_kernel_env()
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=120, cwd=str(tmp_path))
    try:
        def run(code: str) -> str:
            reply = kc.execute_interactive(code, timeout=120, output_hook=lambda msg: None)
            content = reply["content"]
            return "" if content["status"] == "ok" else f"{content['ename']}: {content['evalue']}"

        check = "import clipkit as ck\nparams = ck.notebook.parameters(globals())"
        assert run(PARAMETERS_CELL) == ""
        assert run(check) == ""
        assert run("E_const, L, P = 1.0, 2, [3]\nfor k in range(2): pass") == ""
        assert run(PARAMETERS_CELL.replace("[0.1]", "[0.2, 0.3]")) == ""  # edited, re-run
        assert run(check + "\nassert params['lam'] == [0.2, 0.3], params") == ""
        assert run("# Parameters\nlamda = [0.1]\n") == ""  # what papermill injects
        assert run(check).startswith("ParameterError: unknown parameter(s) 'lamda'")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_per_method_merges_over_the_notebooks_defaults_and_refuses_typos():
    from clipkit.experiments.notebook import ParameterError, per_method

    lams = {"weight_decay": 1e-3, "clip": 0.01}
    assert per_method("lams", {"clip": 0.05}, lams) == {"weight_decay": 1e-3, "clip": 0.05}
    assert per_method("lams", {}, lams) == lams and lams == {"weight_decay": 1e-3, "clip": 0.01}
    options = {"clip": {"power": 1, "pairs": 64}}
    merged = per_method("options", {"clip": {"pairs": 128}, "adversarial": {"eps": 0.1}}, options)
    assert merged == {"clip": {"power": 1, "pairs": 128}, "adversarial": {"eps": 0.1}}
    assert options == {"clip": {"power": 1, "pairs": 64}}  # the defaults are not changed
    with pytest.raises(ParameterError, match=r"parameter 'lams' has the key 'weightdecay', "
                                             r"which is no method; accepted: 'standard'"):
        per_method("lams", {"weightdecay": 5.0}, lams)
    with pytest.raises(ParameterError, match="must map method names to settings, got 0.1"):
        per_method("lams", 0.1, lams)


def test_the_saved_line_names_the_file_a_sweep_renames_the_result_to(tmp_path):
    from clipkit.experiments.notebook import saved

    assert saved(tmp_path / "r.nc", 1.25) == f"wrote {tmp_path / 'r.nc'} (1.2 s)"
    line = saved(tmp_path / "lam=0.1.nc.part", 3.0)
    assert line.startswith(f"wrote {tmp_path / 'lam=0.1.nc.part'} (3.0 s)")
    assert line.endswith("renames it lam=0.1.nc")


def test_a_rerun_with_the_same_result_path_keeps_the_previous_result(tmp_path, capsys):
    """JupyterLab's Run All with an explicit result_path wrote over the last result."""
    path = tmp_path / "mine.nc"
    assert nb.result_file(str(path), "classification") == path  # nothing there: untouched
    assert list(tmp_path.iterdir()) == []
    path.write_text("first result")
    assert nb.result_file(str(path), "classification") == path
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("mine.nc.replaced-")]
    assert len(kept) == 1 and kept[0].read_text() == "first result"
    assert not path.exists()
    assert kept[0].name in capsys.readouterr().out
    part = tmp_path / "point.nc.part"  # a sweep's own file is the sweep's to manage
    part.write_text("partial")
    assert nb.result_file(str(part), "classification") == part and part.read_text() == "partial"
