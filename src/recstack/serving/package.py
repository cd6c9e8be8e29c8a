"""The ``package`` stage: serving bundle -> BentoML model store -> bento -> exported archive.

The store lives inside the project (``bentos/store``, git-ignored) through ``BENTOML_HOME``, so packaging
never touches the user's ``~/bentoml``. The bento is built from a staging folder holding ``service.py``,
``bentofile.yaml``, the ``recstack`` package sources and a fully pinned ``requirements.txt`` of the serving
dependencies only (no Jupyter, DVC, Lightning or Streamlit in the image).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement

MODEL_NAME = "recstack-funnel"
BENTO_NAME = "recstack"
MODEL_ENV = "RECSTACK_MODEL"
# Beside service.py in a bento: the tag of the model it was built with (see service_model_tag).
MODEL_TAG_FILE = "model_tag.txt"
STORE_DIR = "bentos/store"
# What the service imports, directly or through recstack.serving (checked by a test).
SERVING_ROOTS = (
    "bentoml",
    "torch",
    "fbgemm-gpu-cpu",
    "torchrec",
    "faiss-cpu",
    "numba",  # recstack.kernels (ranking features, the policy's MMR)
    "numpy",
    "scipy",
    "polars",
    "pyarrow",
    "pydantic",
    "orjson",  # recstack.serving.eventlog
    "pyyaml",
    "prometheus-client",
    "redis",  # the online state's Redis backend
)
# torchrec asks for the CUDA fbgemm-gpu; fbgemm-gpu-cpu provides the same module (see pyproject [tool.uv]).
EXCLUDED = {"fbgemm-gpu"}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# ``package.export``: the archive ``bentoml export`` writes, and its name (``bentoml import`` reads the format
# from the extension). xz is BentoML's own ``.bento``, the smallest, but single-threaded xz is slow on big
# bentos: 3.3 GB (1M items, 5M users) had not finished after 12 minutes. gz is several times faster, tar
# only copies, none skips the archive (the bento stays in the project's store).
EXPORT_FORMATS: dict[str, str | None] = {
    "xz": "recstack.bento",
    "gz": "recstack.tar.gz",
    "tar": "recstack.tar",
    "none": None,
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def serving_requirements(roots: tuple[str, ...] = SERVING_ROOTS) -> list[str]:
    """``name==version`` of every installed distribution the serving roots need (transitively), sorted.

    Pinned from this environment, the one the tests ran in, and installed with ``--no-deps`` in the
    image, so the image gets exactly these and never the CUDA ``fbgemm-gpu``.
    """
    env = default_environment()
    seen: dict[str, str] = {}
    todo = [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in EXCLUDED:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise RuntimeError(f"serving dependency {name!r} is not installed: run `make setup`") from None
        seen[name] = dist.version
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            todo.append(_norm(req.name))
    return sorted(f"{n}=={v}" for n, v in seen.items())


def use_store(home: str | Path) -> Path:
    """Make ``home`` this process's BentoML home (model and bento stores). Call before any other BentoML
    store access: BentoML resolves its home once per process."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str(home)
    from bentoml._internal.configuration.containers import BentoMLContainer

    current = Path(BentoMLContainer.bentoml_home.get()).resolve()
    if current != home:
        raise RuntimeError(f"BentoML already uses {current} in this process; cannot switch to {home}")
    return home


@dataclass
class PackageResult:
    model_tag: str
    bento_tag: str
    export_path: Path | None
    requirements: list[str]

    def summary(self) -> dict[str, Any]:
        return {
            "model_tag": self.model_tag,
            "bento_tag": self.bento_tag,
            "export_path": str(self.export_path) if self.export_path else None,
            "requirements": self.requirements,
        }


def import_bundle(bundle_dir: str | Path, version: str) -> str:
    """Copy a serving bundle into the model store as ``recstack-funnel:<version>`` (replacing it)."""
    import json

    import bentoml
    from bentoml.exceptions import NotFound

    from recstack.serving.bundle import BUNDLE_CARD

    card = json.loads((Path(bundle_dir) / BUNDLE_CARD).read_text())
    tag = f"{MODEL_NAME}:{version}"
    try:
        bentoml.models.delete(tag)
    except NotFound:
        pass
    labels = {f"{k}_version": v for k, v in card.get("models", {}).items()} | {
        "policy": str(card.get("policy"))
    }
    with bentoml.models.create(tag, labels=labels, metadata={"bundle": card}) as model:
        shutil.copytree(bundle_dir, model.path, dirs_exist_ok=True)
    return str(model.tag)


def service_model_tag(service_dir: str | Path, environ: Mapping[str, str] | None = None) -> str:
    """The model a service starts with: ``RECSTACK_MODEL``; else the model its bento was built with (its
    tag in :data:`MODEL_TAG_FILE` beside ``service.py``); else the store's latest (a checkout's
    ``bentos/``).

    Why not always the latest: a bento served from a store resolves ``recstack-funnel:latest`` against the
    whole store, so once a newer model is imported every older bento would serve it, with code that may
    not read its settings (strictly validated: a setting added since fails the start) or was never
    evaluated with it. ``/admin/reload`` still moves to the store's latest on purpose (:func:`reload_tag`).
    """
    env = os.environ if environ is None else environ
    packaged = Path(service_dir) / MODEL_TAG_FILE
    if not env.get(MODEL_ENV) and packaged.is_file():
        tag = packaged.read_text().strip()
        if not re.fullmatch(rf"{re.escape(MODEL_NAME)}:[A-Za-z0-9_.-]+", tag):
            raise ValueError(f"{packaged} holds {tag!r}, not a {MODEL_NAME}:<version> tag")
        return tag
    return reload_tag(env)  # RECSTACK_MODEL, else the store's latest


def reload_tag(environ: Mapping[str, str] | None = None) -> str:
    """What ``/admin/reload`` loads: ``RECSTACK_MODEL``, else the store's latest model (a newer one
    imported while the service runs)."""
    env = os.environ if environ is None else environ
    return env.get(MODEL_ENV) or f"{MODEL_NAME}:latest"


def stage_build_context(
    service_dir: str | Path, package_src: str | Path, out_dir: str | Path, model_tag: str | None = None
) -> list[str]:
    """Fill ``out_dir`` with what ``bentoml build`` reads; returns the pinned requirements. ``model_tag``:
    the model the bento serves by default (:func:`service_model_tag`)."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("service.py", "bentofile.yaml"):
        shutil.copy2(Path(service_dir) / name, out / name)
    if model_tag is not None:
        (out / MODEL_TAG_FILE).write_text(model_tag + "\n")
    shutil.copytree(package_src, out / "recstack", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    requirements = serving_requirements()
    (out / "requirements.txt").write_text(
        "# Generated by the package stage from the tested environment: exact pins, installed with --no-deps.\n"
        + "\n".join(requirements)
        + "\n"
    )
    return requirements


def _ensure_uv() -> None:
    """``bentoml build`` shells out to uv. The project installs it into its virtualenv (a dependency);
    put that copy on PATH when the stage runs without the venv's bin first, since BentoML's own fallback,
    ``pip install uv``, is impossible in a pip-less uv virtualenv."""
    if shutil.which("uv"):
        return
    import sys

    local = Path(sys.executable).parent
    if not (local / "uv").is_file():
        raise RuntimeError(
            "bentoml build needs uv: none on PATH or beside the interpreter (run `make setup`)"
        )
    os.environ["PATH"] = f"{local}{os.pathsep}{os.environ.get('PATH', '')}"


def package(
    bundle_dir: str | Path,
    version: str,
    service_dir: str | Path,
    package_src: str | Path,
    build_dir: str | Path,
    export_dir: str | Path,
    export: str = "xz",
) -> PackageResult:
    """Import the bundle, build the bento (version = the bundle's version) and export it into
    ``export_dir`` in the format ``export`` (a key of :data:`EXPORT_FORMATS`).

    The caller must have called :func:`use_store` first.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    _ensure_uv()
    model_tag = import_bundle(bundle_dir, version)
    requirements = stage_build_context(service_dir, package_src, build_dir, model_tag)
    try:
        bentoml.bentos.delete(f"{BENTO_NAME}:{version}")
    except NotFound:
        pass
    bento = bentoml.bentos.build_bentofile(
        str(Path(build_dir) / "bentofile.yaml"), build_ctx=str(build_dir), version=version
    )
    exported = export_bento(str(bento.tag), export_dir, export)
    return PackageResult(model_tag, str(bento.tag), exported, requirements)


def check_export(export: Any) -> str:
    """``export`` if it names a format of :data:`EXPORT_FORMATS`; otherwise a ValueError naming the choices."""
    if not isinstance(export, str) or export not in EXPORT_FORMATS:
        raise ValueError(f"package.export must be one of {', '.join(EXPORT_FORMATS)}; got {export!r}")
    return export


def export_bento(tag: str, export_dir: str | Path, export: str) -> Path | None:
    """Write bento ``tag`` to ``export_dir / EXPORT_FORMATS[export]`` and return that path (None for
    ``none``). Archives of the other formats left by an earlier run are removed, so the folder holds
    exactly the one this run wrote."""
    import bentoml

    check_export(export)
    export_dir = Path(export_dir).resolve()  # bentoml export wants an absolute path
    export_dir.mkdir(parents=True, exist_ok=True)
    for name in EXPORT_FORMATS.values():
        if name is not None:
            (export_dir / name).unlink(missing_ok=True)
    name = EXPORT_FORMATS[export]
    if name is None:
        return None
    return Path(bentoml.bentos.export_bento(tag, str(export_dir / name), export))


def code_digest(*roots: str | Path) -> str:
    """sha256 over the relative paths and bytes of the Python and YAML files under ``roots``."""
    import hashlib

    h = hashlib.sha256()
    for root in roots:
        root = Path(root)
        files = (
            [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml"))
        )
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(f.name.encode() if root.is_file() else str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def bundle_version(
    card: dict[str, Any], policy: dict[str, Any], serving: dict[str, Any], code: str = ""
) -> str:
    """A version that changes exactly when what is served changes: models, index, policy, settings, code."""
    import hashlib
    import json

    blob = json.dumps(
        {"card": card, "policy": policy, "serving": serving, "code": code}, sort_keys=True, default=str
    )
    return "v" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def smoke_test(bundle_dir: str | Path, n_users: int) -> dict[str, Any]:
    """Serve the first ``n_users`` known users in-process: every answer must be full and come from the
    funnel. Returns the fallback rate and latency percentiles (ms).

    Budgets are lifted so the check is about correctness, deterministic on a busy machine (a stage cut
    short by a noisy neighbour would make the stage's metrics flicker); latency is the benchmark's job.
    """
    import time

    import numpy as np

    from recstack.serving.config import NO_BUDGETS
    from recstack.serving.engine import Recommender
    from recstack.serving.schemas import RecommendRequest

    rec = Recommender.load(bundle_dir, overrides={"budgets": NO_BUDGETS, "cache": {"enabled": False}})
    try:
        ids = rec.bundle.tables.spec.user_id.values.head(n_users).to_list()
        times, fallbacks, short = [], 0, 0
        k = rec.config.default_k
        for uid in ids:
            start = time.perf_counter()
            resp = rec.recommend(RecommendRequest(user_id=str(uid), k=k))
            times.append((time.perf_counter() - start) * 1000)
            fallbacks += bool(resp.fallbacks)
            short += len(resp.items) < k
        return {
            "requests": len(ids),
            "fallback_rate": fallbacks / max(len(ids), 1),
            "short_lists": short,
            "p50_ms": float(np.percentile(times, 50)) if times else None,
            "p95_ms": float(np.percentile(times, 95)) if times else None,
        }
    finally:
        rec.close()


def package_stage(
    root: str | Path,
    policy: dict[str, Any] | None,
    serving: dict[str, Any] | None,
    export: str = "xz",
    smoke_users: int = 200,
) -> dict[str, Any]:
    """The ``package`` stage: bundle the pipeline's artifacts, import, build, export, smoke-test.

    Writes ``artifacts/package/{bundle,build,package.json}`` and the archive named by ``export`` (see
    :data:`EXPORT_FORMATS`; ``recstack.bento`` for the default xz); the BentoML store is
    ``bentos/store`` (``bentoml serve recstack:latest`` with ``BENTOML_HOME=bentos/store``).
    """
    import json

    from recstack.paths import stage_dir
    from recstack.serving.bundle import build_bundle
    from recstack.training.train_ranking import MODEL_DIR as RANKING_MODEL_DIR
    from recstack.training.train_retrieval import MODEL_DIR as RETRIEVAL_MODEL_DIR

    check_export(export)  # before minutes of bundling
    root = Path(root)
    use_store(root / STORE_DIR)
    out = stage_dir("package", root)
    bundle = out / "bundle"
    card = build_bundle(
        stage_dir("features", root),
        stage_dir("train_retrieval", root) / RETRIEVAL_MODEL_DIR,
        stage_dir("train_ranking", root) / RANKING_MODEL_DIR,
        stage_dir("build_index", root),
        bundle,
        policy=policy or None,
        serving=serving or None,
    )
    code = code_digest(
        root / "src" / "recstack", root / "bentos" / "service.py", root / "bentos" / "bentofile.yaml"
    )
    version = bundle_version(card, policy or {}, serving or {}, code)
    result = package(
        bundle,
        version,
        root / "bentos",
        root / "src" / "recstack",
        out / "build",
        out,
        export,
    )
    smoke = smoke_test(bundle, smoke_users)
    summary = {**result.summary(), "version": version, "bundle": card, "smoke": smoke}
    (out / "package.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return summary
