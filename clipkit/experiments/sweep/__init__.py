"""Papermill sweeps: strict parameter checks, resumable runs, failures recorded, results combined.

A sweep is a small YAML file (read with ``yaml.safe_load``)::

    notebook: quadratic.ipynb        # relative to this file
    grid:                            # the Cartesian product of these lists ...
      lam: [0.01, 0.1, 1.0]
      seed: [0, 1, 2]
    fixed:                           # ... with these values for every point
      epochs: 20
    batch: [lam]                     # optional: lam's whole list goes to each run, whose
                                     # Dataset already has a `lam` dimension
    timeout: 600                     # optional: seconds a notebook cell may run
    start_timeout: 120               # optional: seconds a kernel may take to start
    profiles:                        # optional: override grid/fixed/timeout by name
      quick: {fixed: {epochs: 2}, grid: {seed: [0]}}
      full: {fixed: {epochs: 100}}

More optional keys: ``out`` (the output folder, relative to this file, with the profile's
name as a subfolder; ``--out`` replaces it), ``description`` (what the sweep or a profile
computes, in words), ``kernel`` (default ``python3``), ``result_param`` (the notebook's
parameter that receives the result path; default ``result_path``) and ``allow_nan``
(default false: a result with NaN fails its point, except NaN by design: in a variable
whose ``nan_means`` attribute says what NaN means there, and in runs its ``diverged``
variable records; ``clipkit.results.has_nan``). Grid values are scalars (str, int,
float, bool): each becomes a coordinate of the combined results, so a notebook's result
must not have a swept name as a dimension (unless the spec's ``batch`` lists it). A
dotted name sets one key of a mapping parameter: ``options.clip.pairs: [64, 128]`` gives
each point ``options = {"clip": {"pairs": 64}}`` (merged over a fixed ``options``), and
the coordinate is named ``options.clip.pairs``. Every value is checked before anything
runs: against the notebook's declared types, then by the notebook's own cells tagged
``checks``, run in this process for every point (``checks``; a dotted name's value is
checked there only).
YAML numbers such as ``1e-3`` are read as floats (PyYAML alone would leave them strings).

Each point runs once through papermill into ``OUT/points/``: the executed notebook
``NAME.ipynb`` and the result file ``NAME.nc``, NAME made from the point's swept values.
The notebook receives a path as its ``result_path`` parameter (``NAME.nc.part``) and
writes its Dataset there with :func:`clipkit.results.save`; the runner checks it, stamps
the sweep's coordinates and provenance, and only then writes ``NAME.nc`` (atomically), so
every ``NAME.nc`` is a checked, final result. A point whose result file says ``done``
for the same parameters is skipped (the same spec values, and the same notebook defaults of
the parameters the spec does not set, recorded as ``notebook_defaults``: a parameters cell
edited and saved in JupyterLab makes another run); a point that raises, reports NaN or
times out gets a failed record (its error text) and the others go on. The sweep ends by writing
``OUT/combined.nc`` (:func:`clipkit.results.combine`) and a summary; an interrupted sweep
(Ctrl-C) writes it too, with the points finished so far (the others ``missing``). A point
whose finished result was made with other parameters is moved aside (``NAME.nc`` and its
executed ``NAME.ipynb``, each with ``.superseded-<date-time>`` appended), never
overwritten.

Points run in a local process pool (spawned processes; with several GPUs each worker
sees its own through ``CUDA_VISIBLE_DEVICES``), or on a dask.distributed cluster.

**Relative paths** mean what the user meant, although each kernel runs in its notebook's
folder: paths written in a spec file (``notebook``, ``out`` and path parameters) are
relative to the spec file; in a spec given as a mapping, and on the command line
(``--out``), relative to the current folder. A *path parameter* is one whose name is
``path``, ``dir``, ``root``, ``file`` or ``folder`` or ends in ``_path``, ``_dir``,
``_root``, ``_file`` or ``_folder`` (``data_root``, ``log_dir``, ...); its non-empty
string values (or lists of them) are made absolute (``~`` expanded; values with ``://``
are left alone). The environment variables ``CLIPKIT_DATA`` and ``CLIPKIT_RUNS`` are
made absolute before any kernel starts. The absolute values are what the points get,
and what their result files record (``config``, ``environment`` attrs).

**Faults.** Kernels use IPC sockets and a kernel that fails to start is retried (see
:mod:`clipkit.experiments.sweep.kernels`); each retry is logged and recorded in the point's result
(attrs ``attempts``, ``kernel_retries``). One sweep at a time may use an output folder
(a lock file, ``OUT/.sweep.lock``). A result file that cannot be read is reported,
renamed ``NAME.nc.unreadable-DATE`` (kept, not deleted) and its point recomputed; so is a
finished result of other parameters or of another notebook (the spec changed, the folder
was reused), as ``NAME.nc.superseded-DATE``, with what differs in the log. A result that
cannot be written (disk full, no permission) fails its point with an error naming the file,
and the other points go on.

Modules, one per stage: ``spec`` (read the YAML, apply a profile, expand the grid),
``parameters`` (the notebook's declared parameters; every value checked before anything
runs), ``kernels`` (papermill on a kernel of its own, start failures retried), ``point``
(one point: run, check, stamp its result), ``executors`` (process pool or dask),
``runner`` (the whole sweep: lock, skip, run, combine).
"""

from clipkit.experiments.sweep.executors import gpu_for_worker, visible_gpus
from clipkit.experiments.sweep.parameters import check, notebook_parameters, validate
from clipkit.experiments.sweep.point import (
    Outcome,
    Task,
    is_finished,
    kernel_environment,
    prepare_kernel_env,
    run_point,
)
from clipkit.experiments.sweep.runner import (
    POINTS_DIR,
    Summary,
    lock_folder,
    make_output_folder,
    make_tasks,
    run,
)
from clipkit.experiments.sweep.spec import (
    Point,
    Spec,
    SweepError,
    is_path_parameter,
    load_spec,
    plan,
    point_name,
)
from clipkit.experiments.types import accepted, type_matches

__all__ = [
    "POINTS_DIR",
    "Outcome",
    "Point",
    "Spec",
    "Summary",
    "SweepError",
    "Task",
    "accepted",
    "check",
    "gpu_for_worker",
    "is_finished",
    "is_path_parameter",
    "kernel_environment",
    "load_spec",
    "lock_folder",
    "make_output_folder",
    "make_tasks",
    "notebook_parameters",
    "plan",
    "point_name",
    "prepare_kernel_env",
    "run",
    "run_point",
    "type_matches",
    "validate",
    "visible_gpus",
]
