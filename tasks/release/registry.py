"""The model registry: each promoted model a GTO artifact version (git tags on the commit that records it in
dvc.lock), assigned to a stage, so that `gto show` lists every model a team serves, with its version.

No stage imports this module: registering happens after the pipeline's results are committed (`tailor register`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tasks.core.dag import declared_paths
from tasks.core.errors import UserError
from tasks.core.params import MAIN_ARTIFACT, Params
from tasks.release.lineage import LOCK_FILES, locked_hashes

MULTITASK_ARTIFACT = "multitask-{}"  # a multi-task model's name in the registry


def production_dirs(params: Params) -> dict[str, Path]:
    """Artifact name -> production directory: the top-level specialization's, each of the portfolio's, then each
    multi-task model's (a folder per task it serves)."""
    dirs = {MAIN_ARTIFACT: declared_paths("promote")["production"],
            **{name: declared_paths("portfolio_promote", name)["production"] for name in params.specializations}}
    for model in params.multitask:
        name = MULTITASK_ARTIFACT.format(model)
        if name in dirs:
            raise UserError(f"specializations.{name}: the registry names multi-task model {model!r} so; rename "
                            "the specialization")
        dirs[name] = declared_paths("promote_multitask", model)["production"]
    return dirs


def promoted(production: Path) -> bool:
    """Whether a production directory holds a promoted model: its own, or (a multi-task model's) one per task."""
    return (production / "lineage.json").is_file() or any(production.glob("*/lineage.json"))


def register_promoted(params: Params, stage: str) -> list[str]:
    """Register each production model that dvc.lock records and the registry does not have yet as the next
    version of its artifact, on HEAD, and assign it `stage`; one line per artifact saying what happened."""
    import gto.api  # loads git machinery: only for this command
    from gto.exceptions import ArtifactNotFound

    pending = subprocess.run(["git", "status", "--porcelain", "--", *map(str, LOCK_FILES)], capture_output=True,
                             text=True)
    if pending.returncode != 0 or pending.stdout.strip():
        raise UserError(f"{' or '.join(map(str, LOCK_FILES))} has uncommitted changes (or this is no git "
                        "repository): commit the pipeline's results first, since a registered version points at the "
                        "commit that records its model")
    locked = locked_hashes()
    lines = []
    for name, production in production_dirs(params).items():
        if not promoted(production):
            lines.append(f"{name}: no production model yet (never promoted)")
            continue
        if str(production) not in locked:
            raise UserError(f"{production} is not in {' or '.join(map(str, LOCK_FILES))}; run `dvc repro` (or "
                            "`make portfolio`) and commit its results")
        # The model's content hash in dvc.lock names it in the registry: the same model is never registered twice.
        marker = f"{production} md5 {locked[str(production)]}"
        try:
            latest = gto.api.show(".", name)[0]
        except ArtifactNotFound:
            latest = None
        if latest is not None and any(marker in r["message"] for r in latest["registrations"]):
            lines.append(f"{name}: {latest['version']} is this production model already")
            continue
        version = gto.api.register(".", name, "HEAD", message=f"tailor: {marker}").version
        gto.api.assign(".", name, stage, version=version)
        lines.append(f"{name}: registered {version}, stage {stage} ({marker})")
    return lines
