"""Stage base_model: materialize the configured generalist as a plain safetensors model directory."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from flows.stage import run_stage, start_stage_run
from tasks.models import materialize_base_model
from tasks.params import BaseModelParams, Params


@dataclass(frozen=True)
class Paths:
    out: Path  # the model directory every later stage loads


@flow(name="base_model", on_running=[start_stage_run])
def base_model_flow(base_model: BaseModelParams, paths: Paths) -> Path:
    """Fetch/convert the base model once; every later stage loads it with plain from_pretrained."""
    paths.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tailor-base-") as work_dir:
        return materialize_base_model(base_model, paths.out, Path(work_dir))


def main(params: Params, paths: Paths) -> None:
    base_model_flow(params.base_model, paths)


if __name__ == "__main__":
    run_stage(main, Paths)
