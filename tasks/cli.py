"""The `tailor` command: `tailor check` validates params.yaml without running anything; `tailor lineage` prints a
promoted model's lineage and checks it against dvc.lock; `tailor serve` serves the promoted model over an
OpenAI-compatible API; `tailor register` records the promoted models in the GTO registry. No stage imports this
module."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from tasks.dag import declared_paths
from tasks.errors import UserError
from tasks.interrupts import stop_children
from tasks.lineage import show_lineage
from tasks.params import PARAMS_FILE, Params, load_params
from tasks.tables import table_chunks

SERVER_PID = os.getpid()  # the HTTP process LitServe forks inherits the handler below; only this one reports


# The shipped demo's data and the prompt its prompted baseline is given. On other data that prompt describes
# someone else's task: the prompted baseline would be judged on it and look worse than it is, which favours
# fine-tuning in a comparison the report presents as fair.
DEMO_TRAIN = Path("data/demo/train.jsonl")
DEMO_SYSTEM_PROMPT = "You document the Python standard library."


def data_problems(where: str, params: Params) -> list[str]:
    """What `validate` would refuse before reading a row: each data file exists, reads as its type and holds the
    columns its format needs under their mapped names (its first rows are read); and the prompted baseline's
    system prompt is not the demo's on other data."""
    from tasks.validation import required_columns  # Great Expectations loads with it: only once params are valid

    problems = []
    for split in ("train", "eval"):
        path = getattr(params.data, split)
        try:
            first = next(table_chunks(path, rows=100))
        except UserError as exc:
            problems.append(f"{where}data.{split}: {exc}")
            continue
        missing = [f"'{column}' ({role})" for role, column in required_columns(params.data).items()
                   if column not in first.columns]
        if missing:
            problems.append(f"{where}data.{split}: {path} has no column {', '.join(missing)}, which data.format "
                            f"{params.data.format} needs; its columns are {', '.join(map(str, first.columns))}: "
                            f"map yours under {where}data.columns")
    if params.data.train != DEMO_TRAIN and params.baselines.system_prompt.startswith(DEMO_SYSTEM_PROMPT):
        problems.append(f"{where}baselines.system_prompt: still the demo's (\"{DEMO_SYSTEM_PROMPT}…\") on "
                        f"{params.data.train}; write the instruction you would give a generalist model for your "
                        "task, or the prompted baseline is judged on someone else's prompt")
    return problems


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
    from tasks.export import export_production  # torch loads only for this command

    paths = declared_paths("promote")
    report = export_production(paths["production"], paths["base"],
                               declared_paths("evaluate")["validated"] / "eval.parquet", out, outtype)
    print(f"{out}: merged/, model.gguf ({outtype}), Modelfile; on {report['prompts']} held-out prompts the GGUF "
          f"gives the merged model's next token every time (largest logit difference "
          f"{report['max_abs_logit_difference']:.3g}), and {report['identical_answers']:.0%} of their greedy "
          f"answers are identical; details in {out / 'export.json'}")
    return 0


def register(stage: str) -> int:
    from tasks.registry import register_promoted

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
    from tasks.serving import ServedModel, build_server, listen_address  # torch and the server: this command only

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
    args = parser.parse_args()
    try:
        if args.command == "check":
            sys.exit(check(args.params))
        if args.command == "export":
            sys.exit(export(args.out, args.outtype))
        if args.command == "register":
            sys.exit(register(args.stage))
        if args.command == "serve":
            serve(args.host, args.port, args.model, args.max_batch_size)
        sys.exit(show_lineage(args.model_dir or declared_paths("promote")["production"]))
    except UserError as exc:
        print(f"tailor: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
