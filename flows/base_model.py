"""Stage base_model: materialize the configured generalist as a plain safetensors model directory, with the chat
template every later stage uses."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger

from flows.stage import run_stage, start_stage_run
from tasks.core.params import BaseModelParams, Params
from tasks.formats.registry import TEXT, Shape
from tasks.model.chat_templates import chosen_template, use_chat_template
from tasks.model.sources import load_base_model, save_model_dir


@dataclass(frozen=True)
class Paths:
    templates: Path  # chat templates of your own: tokenize.chat_template may name a .jinja file in this folder
    out: Path  # the model directory every later stage loads


@flow(name="base_model", on_running=[start_stage_run])
def base_model_flow(base_model: BaseModelParams, chat_template: str, shape: Shape, paths: Paths) -> Path:
    """Fetch/convert the base model once; every later stage loads it with plain from_pretrained.

    The chosen chat template is applied here rather than in tokenize, so that models/base holds the one tokenizer
    (template, added tokens, eos) that training, generation, the production model and its exports all share.
    """
    template = chosen_template(chat_template, paths.templates)  # before any download: a bad choice stops here
    paths.out.parent.mkdir(parents=True, exist_ok=True)
    # Downloads go beside the output, not to the system temp folder: Ctrl-C exits at once (tasks/core/interrupts.py),
    # so an interrupted run leaves its folder (a GGUF of hundreds of MB) where the next run finds and removes it.
    work_prefix = f".{paths.out.name}-download-"
    for stale in paths.out.parent.glob(work_prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=work_prefix, dir=paths.out.parent) as work_dir:
        model, tokenizer = load_base_model(base_model, Path(work_dir))
        if template is not None:
            added = use_chat_template(model, tokenizer, template)
            get_run_logger().info("chat template %s applied; tokens added: %s; eos: %s", chat_template,
                                  added or "none", tokenizer.eos_token)
        # Plain text is tokenized without a template: a base model without one is fine for it.
        return save_model_dir(model, tokenizer, paths.out, needs_chat_template=shape != TEXT)


def main(params: Params, paths: Paths) -> None:
    base_model_flow(params.base_model, params.tokenize.chat_template, params.data.shape, paths)


if __name__ == "__main__":
    run_stage(main, Paths)
