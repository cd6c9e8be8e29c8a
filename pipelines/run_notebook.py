"""Run one pipeline stage: execute ``notebooks/<stage>.ipynb`` with Papermill, keep it as a report.

Used as every DVC stage's command::

    python -m pipelines.run_notebook <stage> -p name value ... -P name params.dotted.key ...

* ``-p name value``: a scalar parameter (DVC interpolates ``${...}`` from params.yaml into the command);
  the value is read as YAML, so ``0.01`` is a float, ``true`` a bool, ``data/raw`` a string.
* ``-P name key``: the value of ``key`` (dotted) in params.yaml, any YAML type: for lists, mappings and
  nulls, which DVC cannot interpolate into a command.

The executed notebook is written to ``reports/<stage>.ipynb`` whether the run succeeds or fails. On
failure the message names the stage, the failing cell and the error, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import yaml

KERNEL_NAME = "recstack"  # registered by scripts/setup.sh (ipykernel install --sys-prefix --name recstack)
PARAMS_FILE = "params.yaml"
_VOLATILE_METADATA = ("start_time", "end_time", "duration")
_ALTAIR_ID = re.compile(r"altair-viz-[0-9a-f]{32}")


class StageFailed(RuntimeError):
    """A stage's notebook raised; the message names the stage, the cell and the error."""


def lookup(params: dict[str, Any], dotted: str) -> Any:
    """``params["a"]["b"]`` for ``"a.b"``; KeyError naming the missing key and the file."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{PARAMS_FILE} has no key {dotted!r} (missing {part!r})")
        node = node[part]
    return node


def _make_reproducible(path: Path, base: Path) -> None:
    """Drop what differs between two identical runs from a report, so that its hash in dvc.lock is stable.

    Papermill stamps start/end times and absolute paths into the notebook and gives the injected
    parameters cell a random id; Altair's HTML output names each chart's div with a random UUID. None of
    it says anything about the results.
    """
    text = path.read_text()
    chart_ids: dict[str, str] = {}
    text = _ALTAIR_ID.sub(lambda m: chart_ids.setdefault(m.group(0), f"altair-viz-{len(chart_ids)}"), text)
    nb = nbformat.reads(text, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key in _VOLATILE_METADATA:
        meta.pop(key, None)
    for key in ("input_path", "output_path"):
        if key in meta:
            meta[key] = os.path.relpath(meta[key], base)
    for cell in nb.cells:
        for key in _VOLATILE_METADATA:
            cell.metadata.get("papermill", {}).pop(key, None)
        cell.metadata.pop("execution", None)
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = "injected-parameters"
    nbformat.write(nb, path)


def run_stage(
    stage: str,
    parameters: dict[str, Any] | None = None,
    *,
    root: Path | None = None,
    kernel: str = KERNEL_NAME,
    progress: bool = False,
) -> Path:
    """Execute ``notebooks/<stage>.ipynb`` into ``reports/<stage>.ipynb`` with ``parameters``.

    Args:
        stage: the stage name (the notebook, params section and artifacts folder share it).
        parameters: values injected after the notebook's ``parameters`` cell.
        root: project root (default: the current directory); the notebook runs with it as cwd.
        kernel: the Jupyter kernel to run in; explicit so that a stale user kernel is never picked.
        progress: show Papermill's cell progress bar.

    Returns:
        The executed notebook's path.

    Raises:
        FileNotFoundError: no notebook for ``stage``.
        StageFailed: a cell raised.
    """
    import papermill as pm  # imported here: heavy, and only needed when a stage actually runs
    from papermill.exceptions import PapermillExecutionError

    base = (root or Path.cwd()).resolve()
    source = base / "notebooks" / f"{stage}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"stage {stage!r}: notebook {source} does not exist")
    report = base / "reports" / f"{stage}.ipynb"
    report.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(
            str(source),
            str(report),
            parameters=parameters or {},
            kernel_name=kernel,
            cwd=str(base),
            progress_bar=progress,
            log_output=False,
        )
    except PapermillExecutionError as exc:
        first_line = next((ln for ln in exc.source.splitlines() if ln.strip()), "")
        raise StageFailed(
            f"stage '{stage}' failed in cell {exc.cell_index} (execution count {exc.exec_count}, "
            f"starting `{first_line.strip()[:80]}`): {exc.ename}: {exc.evalue}\n"
            f"The executed notebook with the full traceback is {report.relative_to(base)}."
        ) from None
    finally:
        if report.exists():
            _make_reproducible(report, base)
    return report


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def parse_value(text: str) -> Any:
    """A ``-p`` value read as YAML, except that exponent floats without a dot (``1e-05``, as DVC
    interpolates ``1.0e-05``) are floats: YAML 1.1 would read them as strings."""
    return float(text) if _FLOAT.match(text) else yaml.safe_load(text)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.run_notebook", description=__doc__.split("\n")[0]
    )
    parser.add_argument("stage", help="stage name: runs notebooks/<stage>.ipynb")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("-P", "--param-from", nargs=2, action="append", default=[], metavar=("NAME", "KEY"))
    parser.add_argument("-k", "--kernel", default=KERNEL_NAME)
    parser.add_argument("--progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    params: dict[str, Any] = {name: parse_value(value) for name, value in args.param}
    if args.param_from:
        path = Path(PARAMS_FILE)
        if not path.is_file():
            print(f"stage '{args.stage}': {PARAMS_FILE} not found in {Path.cwd()}", file=sys.stderr)
            return 2
        all_params = yaml.safe_load(path.read_text()) or {}
        try:
            params.update({name: lookup(all_params, key) for name, key in args.param_from})
        except KeyError as exc:
            print(f"stage '{args.stage}': {exc.args[0]}", file=sys.stderr)
            return 2
    try:
        report = run_stage(args.stage, params, kernel=args.kernel, progress=args.progress)
    except (StageFailed, FileNotFoundError) as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        return 1
    print(f"stage '{args.stage}' done; report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
