"""The paper's notebooks run under papermill with tiny parameters, and their results hold.

Each execution starts a Jupyter kernel (a few seconds), so each notebook runs once (module
fixtures) and several tests read its result file. The classification notebook runs on
tiny synthetic IDX files (written here), never on ../shared/data; the figures' content is
checked through the data behind them.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipkit.experiments import results
from clipkit.paper import explore, report

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
pytestmark = pytest.mark.slow


def execute(name: str, out: Path, **params) -> Path:
    """Run ``notebooks/NAME.ipynb`` with ``params``; return its result file."""
    import papermill

    from clipkit.experiments.sweep import prepare_kernel_env

    prepare_kernel_env()  # the kernel imports this checkout's clipkit
    result = out / f"{name}.nc"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"), str(out / f"{name}.ipynb"),
        parameters={**params, "result_path": str(result)}, kernel_name="python3",
        progress_bar=False, cwd=str(NOTEBOOKS),
        execution_timeout=600,  # a stalled kernel fails the test instead of hanging the suite
    )
    return result


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (gzip), the format of the MNIST files."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """10 classes of 28×28 images: a bright block whose place is the class, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, 28, 28))
    for i, c in enumerate(y):
        r, k = divmod(int(c), 5)
        x[i, 4 + 12 * r: 12 + 12 * r, 1 + 5 * k: 6 + 5 * k] += 180
    return np.clip(x, 0, 255), y


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Fashion-MNIST with both splits; MNIST with its test split only (as offline here)."""
    root = tmp_path_factory.mktemp("data")
    for name, splits in (("fashion-mnist", ("train", "t10k")), ("mnist", ("t10k",))):
        (root / name).mkdir()
        for split in splits:
            x, y = synthetic_images(300 if split == "train" else 150, seed=len(split))
            write_idx(root / name / f"{split}-images-idx3-ubyte.gz", x)
            write_idx(root / name / f"{split}-labels-idx1-ubyte.gz", y)
    return root


# --------------------------------------------------------------------------- theory


@pytest.fixture(scope="module")
def theory(tmp_path_factory):
    out = tmp_path_factory.mktemp("theory")
    path = execute("lambda_to_constant", out, n=24, lam_factors=[0.1, 2.0, 4.0], powers=[1, 2],
                   wd_lam=[1e-3, 100.0], hidden=[32, 32], epochs=200, pairs=16,
                   grid_points=101)
    return results.load(path)


def test_theory_result_has_the_variables(theory):
    for var in ("x", "y", "lam_star", "L_star", "label_mean", "label_spread", "E_const",
                "lam_rel", "exact_f", "clip_f", "wd_f", "exact_lip", "clip_lip", "wd_lip",
                "exact_dist", "clip_dist", "wd_dist", "wd_dist_zero", "rate_bound",
                "rate_bound_sharp", "clip_loss"):
        assert var in theory, var
    assert theory.exact_f.dims == ("power", "lam_rel", "x_grid")
    assert theory.lam.dims == ("lam_rel",)  # the absolute λ: a variable, it depends on the data
    assert list(theory.power.values) == [1, 2]
    assert theory.attrs["status"] == "done" and '"epochs": 200' in theory.attrs["config"]
    np.testing.assert_allclose(theory.lam / theory.lam_star, theory.lam_rel)


def test_theory_collapse_to_the_mean_above_twice_the_threshold(theory):
    p1 = theory.sel(power=1)
    above = p1.where(p1.lam_rel >= 2, drop=True)
    spread = float(theory.label_spread)
    assert above.sizes["lam_rel"] == 2
    assert float(above.exact_dist.max()) < 0.05 * spread  # the exact solution: ȳ itself
    assert float(above.clip_dist.max()) < 0.05 * spread  # the CLIP-trained networks
    below = p1.where(p1.lam_rel < 1, drop=True)
    assert float(below.exact_dist.min()) > 0.05 * spread  # and not below λ*


def test_theory_rate_bound_and_limits(theory):
    # the exact minimiser obeys Lip(f_λ) ≤ E(ȳ)/λ (p = 1) and sqrt(E(ȳ)/λ) (p = 2)
    assert bool((theory.exact_lip <= theory.rate_bound * (1 + 1e-6) + 1e-6).all())
    # with p = 2 there is no threshold: still away from ȳ at λ = 2λ*
    p2 = theory.sel(power=2)
    assert float(p2.exact_dist.sel(lam_rel=2.0).item()) > 1e-3
    # weight regularization at a huge λ: the zero network, not the label mean
    big = theory.sel(wd_lam=100.0)
    assert float(big.wd_dist_zero) < 0.05 * float(theory.label_spread)
    assert float(big.wd_dist) > 0.5 * float(theory.label_mean)


def test_theory_notebook_runs_with_one_power(tmp_path):
    # its figures show that power; the comparison of powers 1 and 2 is left out
    path = execute("lambda_to_constant", tmp_path, n=16, lam_factors=[0.5, 2.0], powers=[2],
                   wd_lam=[1.0], hidden=[8], epochs=20, pairs=4, grid_points=21)
    ds = results.load(path)
    assert list(ds.power.values) == [2] and ds.attrs["status"] == "done"
    assert "p = 2" in (tmp_path / "lambda_to_constant.ipynb").read_text()


# --------------------------------------------------------------------------- regression


def test_regression_notebook(tmp_path):
    ds = results.load(execute("regression", tmp_path, n_train=30, n_test=50, epochs=40,
                              batch_size=30, hidden=[16], grid_points=51,
                              options={"clip": {"pairs": 8, "ascent_steps": 3}}))
    assert list(ds.method.values) == ["standard", "weight_decay", "clip"]
    for var in ("f", "loss", "train_mse", "test_mse", "lip_lower", "lip_upper", "lip_exact",
                "target"):
        assert var in ds, var
    assert ds.f.dims == ("method", "x_grid") and ds.loss.sizes["epoch"] == 40
    assert bool((ds.lip_lower <= ds.lip_upper * (1 + 1e-6)).all())
    # the exact constant on [-1, 1] lies below the global upper bound
    assert bool((ds.lip_exact <= ds.lip_upper * (1 + 1e-6)).all())
    assert bool((ds.test_mse > 0).all())


def test_regression_records_a_diverged_method_and_keeps_the_others(tmp_path):
    # weight decay at λ = 1e38: its penalty is inf in float32 at the first step
    path = execute("regression", tmp_path, n_train=30, n_test=50, epochs=5, batch_size=30,
                   hidden=[16], grid_points=51, lams={"weight_decay": 1e38, "clip": 0.01},
                   options={"clip": {"pairs": 8, "ascent_steps": 1}})
    ds = results.load(path)
    assert ds.diverged.values.tolist() == [0, 1, 0]  # standard, weight_decay, clip
    assert bool(ds.test_mse.sel({"method": "weight_decay"}).isnull())
    assert bool(ds.test_mse.sel({"method": ["standard", "clip"]}).notnull().all())
    assert results.has_nan(ds) == []
    printed = (tmp_path / "regression.ipynb").read_text()
    assert "weight_decay: DIVERGED in epoch 1" in printed


# --------------------------------------------------------------------------- classification


TINY = dict(n_train=0, n_test=0, n_eval=40, epochs=2, hidden=[16], batch_size=64,
            pgd_steps=2, bracket_steps=2, schedule="warmup", warmup=1,
            options={"clip": {"pairs": 8}}, threads=1,
            eps_noise=[0.0, 0.3], eps_fgsm=[0.0, 0.1], eps_pgd_l2=[0.0, 2.0],
            eps_pgd_linf=[0.0, 0.1])


@pytest.fixture(scope="module")
def classification(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("classification")
    path = execute("classification", out, dataset="fashion-mnist", data_root=str(data_root),
                   method="clip", lam=[0.0, 0.5], **TINY)
    return results.load(path), out


def test_classification_result_has_the_variables(classification):
    ds, _ = classification
    for var in ("loss", "acc", "test_acc", "lam_epoch", "lip", "clean_acc", "robust_acc",
                "lip_lower", "lip_upper"):
        assert var in ds, var
    assert ds.robust_acc.dims == ("lam", "attack", "eps")
    assert list(ds.attack.values) == ["noise", "fgsm", "pgd_l2", "pgd_linf", "pgd_l2_authors"]
    assert list(ds.lam.values) == [0.0, 0.5]
    assert ds.test_acc.dims == ("lam", "epoch")
    assert "official train" in ds.attrs["data_source"]
    assert str(ds.method.item()) == "clip" and bool(ds.last_activation.item()) is False
    # its NaN (ε outside an attack's grid) are marked as by design: a sweep of this
    # notebook passes the NaN check without allow_nan
    assert results.has_nan(ds) == []
    assert ds.robust_acc.attrs["nan_means"] == "ε not in this attack's grid"
    # the attacks' settings survive the notebook's netCDF file
    settings = json.loads(ds.robust_acc.attrs["attack_settings"])
    assert sorted(settings) == sorted(ds.attack.values.tolist())
    assert settings["pgd_l2"]["steps"] == TINY["pgd_steps"] == settings["pgd_linf"]["steps"]


def test_classification_numbers_are_consistent(classification):
    ds, _ = classification
    ra = ds.robust_acc
    # ε = 0 is the clean accuracy on the evaluation images; attacks never help
    at0 = ra.sel(eps=0.0)
    assert bool((at0 >= ra.max("eps") - 1e-12).all())
    assert bool((ds.lip_lower <= ds.lip_upper * (1 + 1e-6)).all())
    assert bool(((ds.clean_acc >= 0) & (ds.clean_acc <= 1)).all())
    # the warm-up: λ = 0 in the first epoch, the base λ after it
    np.testing.assert_allclose(ds.lam_epoch.isel(epoch=0), 0.0)
    np.testing.assert_allclose(ds.lam_epoch.isel(epoch=-1), ds.lam)


def test_classification_mnist_without_training_images_splits_the_test_set(tmp_path, data_root):
    ds = results.load(execute("classification", tmp_path, dataset="mnist",
                              data_root=str(data_root), method="standard", model="mlp",
                              last_activation=True, attacks=["pgd_l2"],
                              **TINY))
    assert "TEST split" in ds.attrs["data_source"]
    assert "120 training and 30 test" in ds.attrs["data_source"]
    assert list(ds.lam.values) == [0.0]
    assert bool(ds.last_activation.item()) is True
    assert results.has_nan(ds) == [] and bool(ds.penalty.isnull().all())  # standard: none


def test_classification_with_the_authors_selection_and_learning_curves(tmp_path, data_root):
    params = {**TINY, "epochs": 3, "eps_pgd_l2": [0.0, 2.0]}
    ds = results.load(execute("classification", tmp_path, dataset="fashion-mnist",
                              data_root=str(data_root), method="clip", last_activation=True,
                              select="authors", val_steps=2, curve_every=2, n_curve=20,
                              authors_pgd_steps=3, **params))
    # 10 % of the 300 training images held out, never trained on
    assert ds.attrs["train_images"] == 270 and ds.attrs["validation_images"] == 30
    assert "30 of the training images held out" in ds.attrs["data_source"]
    assert float(ds.selected.sum()) == 1.0  # one kept epoch
    kept = int(ds.selected.squeeze().values.argmax())
    assert float(ds.score.squeeze()[kept]) == float(ds.score.max())
    np.testing.assert_allclose(ds.score, ds.val_acc_pgd + (ds.acc > 0.95))
    # curves at epochs 2 and 3 (every 2, and the last), NaN at epoch 1
    for var in ("curve_pgd_l2_authors", "curve_pgd_l2"):
        assert list(np.isnan(ds[var].squeeze().values)) == [True, False, False], var
    assert '"select": "authors"' in ds.attrs["config"]
    assert results.has_nan(ds) == []  # the curves' unmeasured epochs are NaN by design


def test_classification_certifies_with_the_bound_it_is_given(tmp_path, data_root):
    """certified = "local" (a bound per image) is one parameter away, and an unknown value
    is named with what is accepted."""
    import papermill

    ds = results.load(execute("classification", tmp_path, data_root=str(data_root),
                              method="standard", attacks=["pgd_l2"], certified="local",
                              **{**TINY, "n_eval": 6, "eps_pgd_l2": [0.0, 0.1]}))
    assert "local" in ds.attrs["certified_notes"]
    cert = ds.certified_acc.sel(eps=0.1)
    assert bool((cert <= ds.robust_acc.sel(attack="pgd_l2", eps=0.1) + 1e-12).all())
    with pytest.raises(papermill.PapermillExecutionError, match="'certified' = 'exact'"):
        execute("classification", tmp_path, data_root=str(data_root), certified="exact")


def test_classification_rejects_unknown_and_mistyped_parameters(tmp_path, data_root):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="unknown parameter.*'lamda'"):
        execute("classification", tmp_path, lamda=[0.1])
    with pytest.raises(papermill.PapermillExecutionError, match="'epochs'.*str"):
        execute("classification", tmp_path, epochs="2")
    with pytest.raises(papermill.PapermillExecutionError, match="has no λ"):
        execute("classification", tmp_path, method="standard", lam=[0.1],
                data_root=str(data_root))  # the data load before the method is built



@pytest.fixture(scope="module")
def diverged(tmp_path_factory, data_root):
    """A λ grid where one λ diverges (weight decay 1e10 under SGD lr 0.1)."""
    out = tmp_path_factory.mktemp("diverged")
    path = execute("classification", out, dataset="fashion-mnist", data_root=str(data_root),
                   method="weight_decay", lam=[0.0, 1e10], optimizer="sgd", lr=0.1,
                   **{**TINY, "schedule": "default"})
    return results.load(path), out


def test_classification_records_a_diverged_lambda_and_keeps_the_others(diverged):
    ds, out = diverged
    assert list(ds.lam.values) == [0.0, 1e10]
    assert int(ds.diverged.sel(lam=0.0)) == 0 and int(ds.diverged.sel(lam=1e10)) > 0
    for var in ("clean_acc", "robust_acc", "lip_lower", "lip_upper", "certified_acc"):
        assert bool(ds[var].sel(lam=1e10).isnull().all()), var
    # the other λ trained and was evaluated (tests/experiments/test_evaluate.py: exactly as
    # without the diverging one)
    for var in ("clean_acc", "lip_lower", "lip_upper"):
        assert np.isfinite(float(ds[var].sel(lam=0.0))), var
    assert results.has_nan(ds) == []  # the diverged λ's NaN are recorded, not faults
    printed = (out / "classification.ipynb").read_text()
    assert "λ = 1e+10 DIVERGED in epoch" in printed


# --------------------------------------------------------------------------- explore, report


def test_explore_opens_a_sweep_and_writes_the_tradeoff(tmp_path, classification):
    ds, out = classification
    sweep = tmp_path / "sweep" / "points"
    sweep.mkdir(parents=True)
    shutil.copy(out / "classification.nc", sweep / "run.nc")
    summary = results.load(execute("explore", tmp_path, sweep_dir=str(sweep.parent),
                                   attack="pgd_l2"))
    for var in ("clean_acc", "robust_acc_max_eps", "eps_max", "lip_lower", "lip_upper"):
        assert var in summary, var
    assert summary.sizes["lam"] == 2
    np.testing.assert_allclose(summary.clean_acc.squeeze(), ds.clean_acc)
    assert float(summary.eps_max.sel(attack="pgd_l2")) == 2.0


def test_explore_runs_as_committed_on_the_papers_tradeoff(tmp_path):
    """A fresh clone's Run All: the default sweep_dir is paper/results/tradeoff."""
    summary = results.load(execute("explore", tmp_path))
    assert "paper/results/tradeoff" in json.loads(summary.attrs["config"])["source"]
    assert summary.sizes["lam"] > 1 and "clean_acc" in summary


def test_a_report_with_a_diverged_lambda_builds(tmp_path, theory, diverged):
    ds, _ = diverged
    runs = tmp_path / "runs"
    for name, run in (("theory", theory), ("tradeoff", ds), ("table", ds)):
        (runs / name).mkdir(parents=True)
        results.save(run, runs / name / "points" / "run.nc")
        results.save(results.combine([run]), runs / name / results.COMBINED_NAME)
    text = report.build(runs, tmp_path / "paper", profile="quick").read_text()
    assert "tradeoff.png" in {p.name for p in (tmp_path / "paper" / "figures").iterdir()}
    # said where the table and the trade-off figure lose the λ
    assert text.count("**Diverged**: training became NaN or infinite in 1 of 2 runs") == 2
    assert "lam 1e+10 (epoch 1)" in text


def test_report_builds_figures_tables_and_readme(tmp_path, theory, classification):
    ds, _ = classification
    runs = tmp_path / "runs"
    for name, run in (("theory", theory), ("tradeoff", ds), ("table", ds)):
        (runs / name).mkdir(parents=True)
        results.save(run, runs / name / "points" / "run.nc")  # where the provenance is read
        results.save(results.combine([run]), runs / name / results.COMBINED_NAME)
    path = report.build(runs, tmp_path / "paper", profile="quick")
    text = path.read_text()
    figures = {p.name for p in (tmp_path / "paper" / "figures").iterdir()}
    for name in ("theory_fits", "theory_lipschitz", "theory_distance", "theory_power",
                 "tradeoff", "robustness_fashion-mnist"):
        assert f"{name}.png" in figures and f"{name}.pdf" in figures, name
    assert (tmp_path / "paper" / "tables" / "theory.md").is_file()
    assert "λ*" in text
    # each sweep's combined result, for the explorer, without trained weights
    for name, run in (("theory", theory), ("tradeoff", ds)):
        kept = explore.open_sweep(tmp_path / "paper" / "results" / name)
        dropped = {v for v in run.data_vars if v.startswith(("param_", "buffer_"))}
        assert set(kept.data_vars) == set(results.combine([run]).data_vars) - dropped
    # a sweep that keeps its trained weights (a notebook of one's own over ck.fit_path)
    weighted = theory.assign(param_0_weight=(("row",), np.ones(3)))
    from clipkit.paper.runinfo import save_for_explorer
    (path,) = save_for_explorer({"mine": weighted, "none": None}, tmp_path / "explorer")
    assert path == tmp_path / "explorer" / "mine" / results.COMBINED_NAME
    assert set(results.load(path).data_vars) == set(theory.data_vars)
    # the device sentence comes from the runs' provenance (these ran on the CPU)
    minutes = (theory.attrs["wall_time"] + 2 * ds.attrs["wall_time"]) / 60
    assert f"device: **cpu**; 3 finished runs computed for {minutes:.1f} min" in text
    assert "on a GPU (these runs had none)" in text
    assert "whole reproduction: not recorded" in text
    # a resumed reproduction says that its times are this invocation's only
    text = report.build(runs, tmp_path / "paper", profile="quick", total_seconds=90.0,
                        timings={"theory": 3.0}, earlier={"theory": 1}).read_text()
    assert ("whole reproduction: 1.5 min for this invocation; 1 points had been finished "
            "by an earlier one") in text
    assert "(3 s; 1 points finished by an earlier invocation)" in text
    assert "What the **quick** profile ran" in text and "**table** (1 runs)" in text
