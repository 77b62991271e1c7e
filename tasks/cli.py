"""The `tailor` command: `tailor check` validates params.yaml without running anything; `tailor lineage` prints a
promoted model's lineage and checks it against dvc.lock; `tailor serve` serves the promoted model over an
OpenAI-compatible API; `tailor register` records the promoted models in the GTO registry. No stage imports this
module."""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import BaseModel

from tasks.core.dag import declared_paths
from tasks.core.errors import UserError
from tasks.core.interrupts import stop_children
from tasks.core.params import PARAMS_FILE, Params, load_params, subsection
from tasks.data.tables import table_chunks
from tasks.release.lineage import show_lineage

SERVER_PID = os.getpid()  # the HTTP process LitServe forks inherits the handler below; only this one reports


# The shipped demo's data and the prompt its prompted baseline is given. On other data that prompt describes
# someone else's task: the prompted baseline would be judged on it and look worse than it is, which favours
# fine-tuning in a comparison the report presents as fair.
DEMO_TRAIN = Path("data/demo/train.jsonl")
DEMO_SYSTEM_PROMPT = ("You document the Python standard library. Answer with one sentence in the style of a "
                      "docstring summary.")


def data_problems(where: str, params: Params) -> list[str]:
    """What `validate` would refuse before reading a row: each data file exists, reads as its type and holds the
    columns its format needs under their mapped names (its first rows are read); and the prompted baseline's
    system prompt is not the demo's on other data."""
    from tasks.formats.registry import format_of  # Great Expectations loads with it: only once params are valid

    problems = []
    for split in ("train", "eval"):
        path = getattr(params.data, split)
        try:
            first = next(table_chunks(path, rows=100))
        except UserError as exc:
            problems.append(f"{where}data.{split}: {exc}")
            continue
        missing = [f"'{column}' ({role})" for role, column in format_of(params.data.format).columns(params.data).items()
                   if column not in first.columns]
        if missing:
            problems.append(f"{where}data.{split}: {path} has no column {', '.join(missing)}, which data.format "
                            f"{params.data.format} needs; its columns are {', '.join(map(str, first.columns))}: "
                            f"map yours under {where}data.columns")
        if split == "train" and params.data.group_by and params.data.group_by not in first.columns:
            problems.append(f"{where}data.group_by: {path} has no column '{params.data.group_by}'; its columns are "
                            f"{', '.join(map(str, first.columns))}")
    if params.data.train != DEMO_TRAIN and params.baselines.system_prompt == DEMO_SYSTEM_PROMPT:
        problems.append(f"{where}baselines.system_prompt: still the demo's (\"{DEMO_SYSTEM_PROMPT[:40]}…\") on "
                        f"{params.data.train}; write the instruction you would give a generalist model for your "
                        "task, or the prompted baseline is judged on someone else's prompt")
    return problems


EXAMPLES = Path("examples")
BASE_EXAMPLE = "qa"  # a complete params file: every other example sets its own keys over it


def example_names(root: Path = Path()) -> list[str]:
    return sorted(path.parent.name for path in (root / EXAMPLES).glob("*/params.yaml"))


def example_summary(name: str) -> str:
    """An example's first comment line: what it is."""
    return (EXAMPLES / name / "params.yaml").read_text(encoding="utf-8").splitlines()[0].lstrip("# ")


def overlay(base: Any, keys: Any, section: type[BaseModel] | None = Params) -> None:
    """Set the example's keys over the base, section by section; a key's comment travels with it. A mapping that is
    one value (finetune.grpo.rewards) replaces the base's whole, as does a base_model of another `source` (its keys
    differ)."""
    for key, value in keys.items():
        below = base.get(key)
        inner = subsection(section, key)
        same_source = isinstance(value, dict) and isinstance(below, dict) and "source" in value \
            and value["source"] == below.get("source")
        if value and isinstance(value, dict) and isinstance(below, dict) and (inner is not None or same_source):
            overlay(below, value, inner)
            continue
        base[key] = value
        if key in keys.ca.items:
            base.ca.items[key] = keys.ca.items[key]


def example_params(name: str, root: Path = Path()) -> str:
    """The params.yaml of example `name`: its header comment, then the Q&A example with its keys set over it,
    every comment kept (ruamel.yaml's round trip)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.width = 116
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    params = yaml.load((root / EXAMPLES / BASE_EXAMPLE / "params.yaml").read_text(encoding="utf-8"))
    header = ""
    if name != BASE_EXAMPLE:
        text = (root / EXAMPLES / name / "params.yaml").read_text(encoding="utf-8")
        leading = itertools.takewhile(lambda line: line.startswith("#"), text.splitlines())
        header = "".join(line + "\n" for line in leading) + "#\n"
        overlay(params, yaml.load(text))
    written = io.StringIO()
    yaml.dump(params, written)
    return header + written.getvalue()


def init(example: str | None, force: bool) -> int:
    """Write params.yaml from an example (and its data, where the example has a generator); None lists them."""
    names = example_names()
    if example is None:
        print("\n".join(f"{name:16} {example_summary(name)}" for name in names))
        print("\ntailor init --example NAME writes params.yaml from one (and its data, where it has a generator)")
        return 0
    if example not in names:
        raise UserError(f"--example {example}: no such example; choose one of {', '.join(names)} (tailor init "
                        "lists them)")
    edited = subprocess.run(["git", "status", "--porcelain", "--", str(PARAMS_FILE)], capture_output=True, text=True)
    if PARAMS_FILE.is_file() and not force and (edited.returncode != 0 or edited.stdout.strip()):
        raise UserError(f"{PARAMS_FILE} has changes git does not have: commit them first (git commit {PARAMS_FILE}), "
                        "or run with --force to replace them")
    generator = EXAMPLES / example / "generate.py"
    if generator.is_file() and subprocess.run([sys.executable, str(generator)]).returncode != 0:
        raise UserError(f"{generator} failed (its output is above); {PARAMS_FILE} was left as it was")
    staged = PARAMS_FILE.with_name(f".{PARAMS_FILE.name}.tmp")  # replaced in one step: never half-written
    staged.write_text(example_params(example), encoding="utf-8")
    os.replace(staged, PARAMS_FILE)
    print(f"tailor: wrote {PARAMS_FILE} from {EXAMPLES / example}; next: tailor check, then dvc repro")
    return 0


def check(path: Path) -> int:
    """params.yaml against the schema, then each specialization's data files against its params."""
    params = load_params(path)
    problems = data_problems("", params) + [
        problem for name in params.specializations
        for problem in data_problems(f"specializations.{name}.", params.specialized(name))]
    if problems:
        raise UserError(f"{path} is valid, but its data is not ready:\n  " + "\n  ".join(problems))
    print(f"{path} is valid; its data files hold the columns it maps")
    return 0


def export(out: Path, outtype: str) -> int:
    from tasks.release.export import export_production  # torch loads only for this command

    paths = declared_paths("promote")
    report = export_production(paths["production"], paths["base"],
                               declared_paths("evaluate")["validated"] / "eval.parquet", out, outtype)
    print(f"{out}: merged/, model.gguf ({outtype}), Modelfile; on {report['prompts']} held-out prompts the GGUF "
          f"gives the merged model's next token every time (largest logit difference "
          f"{report['max_abs_logit_difference']:.3g}), and {report['identical_answers']:.0%} of their greedy "
          f"answers are identical; details in {out / 'export.json'}")
    return 0


def register(stage: str) -> int:
    from tasks.release.registry import register_promoted

    print("\n".join(register_promoted(load_params(), stage)))
    return 0


def stop_serving(signum: int, frame: FrameType | None) -> None:
    # LitServe's monitor thread would log the manager process's end, which we cause, as a crash with a traceback.
    logging.disable(logging.CRITICAL)
    stop_children(grace_seconds=0)  # LitServe's processes hold nothing to save, and SIGTERM makes them print tracebacks
    if os.getpid() == SERVER_PID:
        print("\ntailor: server stopped", file=sys.stderr, flush=True)
    os._exit(0)


def serving_folder(specialization: str, multitask: list[str]) -> Path:
    """What serves a specialization: the multi-task model's folder for it where promote_multitask promoted one
    (the first multi-task model of params.yaml that has one), else the specialization's own production model."""
    for model in multitask:
        folder = declared_paths("promote_multitask", model)["production"] / specialization
        if (folder / "lineage.json").is_file():
            return folder
    return declared_paths("portfolio_promote", specialization)["production"]


def served_models(extra: list[str]) -> list[tuple[str, Path]]:
    """(name, directory) of each model served: the promote stage's production model as `production`, its base
    model as `base`, each specialization's production model (or the multi-task model, where it won that task)
    under its name, then each --model NAME=PATH."""
    paths = declared_paths("promote")
    params = load_params()
    models = [("production", paths["production"]), ("base", paths["base"]),
              *((name, serving_folder(name, list(params.multitask))) for name in params.specializations)]
    for entry in extra:
        name, _, path = entry.partition("=")
        if not name or not path or name in {served for served, _ in models}:
            raise UserError(f"--model {entry}: give NAME=PATH with a name not served already")
        models.append((name, Path(path)))
    return models


def serve(host: str, port: int, extra: list[str], max_batch_size: int) -> None:
    from tasks.release.serving import (  # torch and the server: this command only
        ServedModel,
        build_server,
        listen_address,
    )

    host = listen_address(host)
    if not 1024 <= port <= 65535:
        raise UserError(f"--port {port}: use a port from 1024 to 65535")
    models = [ServedModel(name, path) for name, path in served_models(extra)]
    server = build_server(models, declared_paths("promote")["base"], host, max_batch_size)
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or kill: one line, no process left (workers included)
        signal.signal(signum, stop_serving)
    print(f"tailor: serving {', '.join(m.name for m in models)} at http://{host}:{port}/v1 (OpenAI-compatible; "
          "Ctrl-C stops)", file=sys.stderr, flush=True)
    server.run(host=host, port=port, generate_client_file=False, log_level="warning", num_api_servers=1)
    sys.exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="tailor", description="tailor: reproducible LLM specialization")
    commands = parser.add_subparsers(dest="command", required=True)
    initializing = commands.add_parser("init", help="write params.yaml from a ready example; without --example, "
                                                    "list them")
    initializing.add_argument("--example", choices=example_names(), metavar="NAME")
    initializing.add_argument("--force", action="store_true", help="replace a params.yaml with uncommitted changes")
    checking = commands.add_parser("check", help="validate params.yaml against the schema; runs nothing")
    checking.add_argument("params", nargs="?", type=Path, default=PARAMS_FILE)
    lineage = commands.add_parser("lineage", help="print a promoted model's lineage and check it against dvc.lock")
    lineage.add_argument("model_dir", nargs="?", type=Path, help="default: the promote stage's production directory")
    serving = commands.add_parser("serve", help="serve the promoted model and the base model over an "
                                                "OpenAI-compatible API (127.0.0.1 unless --host says otherwise)")
    serving.add_argument("--host", default="127.0.0.1", help="a non-loopback address needs TAILOR_API_KEY set")
    serving.add_argument("--port", type=int, default=8000)
    serving.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                         help="also serve this LoRA adapter or model directory, as NAME (repeatable)")
    serving.add_argument("--max-batch-size", type=int, default=8, choices=range(2, 257), metavar="2..256",
                         help="requests generated together in one batch (default 8)")
    exporting = commands.add_parser("export", help="write the production model as a merged model and a GGUF file "
                                                  "(llama.cpp, Ollama), checked against each other")
    exporting.add_argument("--out", type=Path, default=Path("models/export"))
    exporting.add_argument("--outtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"])
    registering = commands.add_parser("register", help="register each promoted model not registered yet (GTO: a "
                                                       "version tag and a stage, on HEAD; `gto show` lists them)")
    registering.add_argument("--stage", default="prod", help="the stage assigned to each new version (default prod)")
    sweeping = commands.add_parser("sweep", help="run trials of tokenize/finetune knobs as DVC experiments scored on "
                                                 "the dev split, write the best into params.yaml, then dvc repro promote")
    sweeping.add_argument("spec", type=Path, help="the sweep file: the knobs and their values (docs/sweeps.md)")
    sweeping.add_argument("--no-repro", action="store_true", help="apply the choice to params.yaml, run nothing more")
    args = parser.parse_args()
    try:
        if args.command == "init":
            sys.exit(init(args.example, args.force))
        if args.command == "check":
            sys.exit(check(args.params))
        if args.command == "export":
            sys.exit(export(args.out, args.outtype))
        if args.command == "register":
            sys.exit(register(args.stage))
        if args.command == "sweep":
            from tasks.evaluate.sweep import sweep  # DVC's API and Optuna: this command only

            sys.exit(sweep(args.spec, repro=not args.no_repro))
        if args.command == "serve":
            serve(args.host, args.port, args.model, args.max_batch_size)
        sys.exit(show_lineage(args.model_dir or declared_paths("promote")["production"]))
    except UserError as exc:
        print(f"tailor: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
