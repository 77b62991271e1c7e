"""`tailor export`: the production bundle as a standalone model and as a GGUF file for llama.cpp and Ollama, made
by llama.cpp's own converter and checked against the standalone model before it is kept. The export follows the
bundle (tasks/release/bundle.py): a fine-tuned bundle exports its adapter merged into the base weights, a prompted
one the base weights with its system prompt and few-shot exchanges in the Ollama Modelfile (`SYSTEM`, `MESSAGE`),
and the held-out prompts of the check are built as the bundle builds them. A retrieval bundle searches its index per
request, which no GGUF file or Modelfile can do: it is served by `tailor serve`, and its export is refused.

The converter is not copied into this repository: it comes from the llama.cpp tree vendored in the pinned
`llama-cpp-python` source distribution (convert_hf_to_gguf.py with its `conversion` modules and `gguf-py`), fetched
once from the package index and unpacked into tailor's cache. The file is fetched from the index's simple API rather
than by `pip download`: pip prepares an sdist's metadata by installing and running its build backend, unpinned code
that has no business running here; the file is then checked against its pinned sha256 before it is opened.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from tasks.core.atomic_dir import write_dir_atomically
from tasks.core.errors import UserError
from tasks.formats import hermes
from tasks.model.sources import PIP_NETWORK_OPTIONS, WHEEL_CACHE, checked
from tasks.release.bundle import Bundle, Prompter
from tasks.release.promotion import write_merged

CONVERTER_PACKAGE = "llama-cpp-python==0.3.36"
CONVERTER_SDIST = "llama_cpp_python-0.3.36.tar.gz"
CONVERTER_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"  # its sdist, from PyPI
DEFAULT_INDEX = "https://pypi.org/simple"
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
CONVERTER_ADVICE = "the GGUF export needs llama.cpp's converter from that source distribution"
GGUF_FILE = "model.gguf"
CHECK_PROMPTS = 16
CHECK_NEW_TOKENS = 24


@dataclass(frozen=True)
class RoundTrip:
    """How the exported GGUF compares with the merged model it came from, on held-out prompts."""

    prompts: int
    max_abs_logit_difference: float  # next-token logits after each prompt
    next_token_agreement: float  # share of prompts whose greedy next token is the same
    identical_answers: float  # share of greedy answers (CHECK_NEW_TOKENS) that are identical


def index_url() -> str:
    """The package index pip is configured with (PIP_INDEX_URL or a pip.conf `index-url`), else PyPI."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    urls = [line.split("=", 1)[1].strip("'\"") for line in listed.splitlines() if line.split("=", 1)[0].endswith(
        ".index-url")]
    return (urls[-1] if urls else DEFAULT_INDEX).rstrip("/")


def index_download(project: str, filename: str, sha256: str, cache_dir: Path, advice: str) -> Path:
    """One named file of a project from the index's simple API (PEP 691 JSON), cached and checked by sha256."""
    dest = cache_dir / filename
    if dest.is_file():
        return checked(dest, sha256, filename)
    index = index_url()
    timeout = float(PIP_NETWORK_OPTIONS[PIP_NETWORK_OPTIONS.index("--timeout") + 1])
    try:
        request = urllib.request.Request(f"{index}/{project}/",
                                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            files = json.load(response)["files"]
        url = next((entry["url"] for entry in files if entry["filename"] == filename), None)
        if url is None:
            raise UserError(f"the package index {index} lists no {filename}; {advice}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".part")
        source = urllib.parse.urljoin(f"{index}/{project}/", url)
        with urllib.request.urlopen(source, timeout=timeout) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out)
        partial.rename(dest)
    except (OSError, ValueError, KeyError) as error:  # URLError is an OSError; a page that is not the JSON API
        raise UserError(f"could not fetch {filename} from the package index {index} ({error}); {advice}") from None
    return checked(dest, sha256, filename)


def converter_script(cache_dir: Path = WHEEL_CACHE) -> Path:
    """llama.cpp's convert_hf_to_gguf.py and what it imports, unpacked once from the pinned sdist."""
    version = CONVERTER_PACKAGE.split("==")[1]
    dest = cache_dir / f"llama.cpp-from-llama-cpp-python-{version}"
    if (dest / CONVERTER_PARTS[0]).is_file():
        return dest / CONVERTER_PARTS[0]
    sdist = index_download("llama-cpp-python", CONVERTER_SDIST, CONVERTER_SHA256, cache_dir, CONVERTER_ADVICE)
    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            _, _, inside = member.name.partition("/vendor/llama.cpp/")
            if inside.startswith(CONVERTER_PARTS):
                member.name = inside
                members.append(member)
        if not members:
            raise UserError(f"{sdist.name} carries no vendor/llama.cpp/{CONVERTER_PARTS[0]}; {CONVERTER_ADVICE}")
        archive.extractall(staging, members=members, filter="data")
    staging.rename(dest)
    return dest / CONVERTER_PARTS[0]


def convert_to_gguf(model_dir: Path, out_file: Path, outtype: str) -> None:
    """Run llama.cpp's converter on a transformers model directory (safetensors, tokenizer, config)."""
    done = subprocess.run([sys.executable, str(converter_script()), str(model_dir), "--outtype", outtype,
                           "--outfile", str(out_file)], capture_output=True, text=True)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-3:]
        raise UserError("llama.cpp's converter could not convert this model (an architecture or tokenizer it does "
                        "not know?): " + " | ".join(last))


# ChatML in Ollama's template language, with tools as tasks/formats/hermes.py writes them: the definitions in the
# system message, an assistant's calls in <tool_call> tags (Ollama reads a reply's calls back by this template), and
# consecutive tool results as one user message of <tool_response> blocks. Ollama writes a definition's JSON with its
# own key order, so the tools block may differ in spacing and order from training's (no Ollama here to check it).
OLLAMA_CHATML = (
    "{{- if or .System .Tools }}<|im_start|>system\n{{ if .System }}{{ .System }}{{ if .Tools }}\n\n{{ end }}{{ end }}"
    "{{- if .Tools }}" + hermes.TOOLS_HEADER + "{{ range .Tools }}\n{{ . }}{{ end }}" + hermes.TOOLS_FOOTER
    + "{{ end }}<|im_end|>\n{{ end }}"
    "{{- $previous := \"\" }}{{- range $m := .Messages }}{{- if ne .Role \"system\" }}"
    "{{- if eq .Role \"tool\" }}{{ if eq $previous \"tool\" }}\n{{ else }}<|im_start|>user\n{{ end }}"
    "<tool_response>\n{{ .Content }}\n</tool_response>"
    "{{- else }}{{ if eq $previous \"tool\" }}<|im_end|>\n{{ end }}<|im_start|>{{ .Role }}\n{{ .Content }}"
    "{{- range $j, $c := .ToolCalls }}{{ if or $j $m.Content }}\n{{ end }}<tool_call>\n"
    "{\"name\": \"{{ .Function.Name }}\", \"arguments\": {{ .Function.Arguments }}}\n</tool_call>{{ end }}<|im_end|>\n"
    "{{ end }}{{ $previous = .Role }}{{ end }}{{ end }}{{ if eq $previous \"tool\" }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)


def ollama_modelfile(tokenizer: PreTrainedTokenizerBase, bundle: Bundle | None) -> str:
    """An Ollama Modelfile beside the GGUF: the chat template in Ollama's template language, the end-of-turn token
    as a stop word so that answers end where the specialist learned to end them, and the bundle's system prompt and
    few-shot exchanges, which Ollama puts before every conversation as the bundle does."""
    stop = tokenizer.eos_token
    template = tokenizer.chat_template or ""
    lines = [f"FROM ./{GGUF_FILE}", "PARAMETER temperature 0", f'PARAMETER stop "{stop}"']
    if bundle is not None:
        lines.append(f"PARAMETER num_predict {bundle.max_new_tokens}")
        if bundle.recipe.system_prompt:
            lines.append(f'SYSTEM """{bundle.recipe.system_prompt}"""')
        lines += [f'MESSAGE {role} """{text}"""' for question, answer in bundle.recipe.examples
                  for role, text in (("user", question), ("assistant", answer))]
    if "<|im_start|>" in template:  # ChatML, as the default model and `tokenize.chat_template: chatml` write it
        lines.append(f'TEMPLATE """{OLLAMA_CHATML}"""')
    else:  # Ollama reads the Jinja template the converter stored in the GGUF (tokenizer.chat_template)
        lines.append("# TEMPLATE: taken from the GGUF's tokenizer.chat_template")
    return "\n".join(lines) + "\n"


def check_prompts(eval_file: Path, tokenizer: PreTrainedTokenizerBase, count: int,
                  prompter: Prompter | None) -> list[list[int]]:
    """Held-out prompts as token ids (the validated split, in its canonical shape): conversations up to their last
    answer, as the bundle builds them (`prompter`), through the chat template; plain text as it is."""
    frame = pd.read_parquet(eval_file).head(count)
    if "text" in frame.columns:
        return [tokenizer(text[:400])["input_ids"] for text in frame["text"]]
    histories = [json.loads(messages)[:-1] for messages in frame["messages"]]
    if prompter is not None:
        histories = [prompter.conversation(history) for history in histories]
    return [tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"] for history in histories]


def round_trip(merged_dir: Path, gguf_file: Path, prompts: list[list[int]]) -> RoundTrip:
    """Load the GGUF back with transformers' GGUF loader and compare it with the merged model, prompt by prompt."""
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    exported = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                    dtype=torch.float32).eval()
    eos = AutoTokenizer.from_pretrained(merged_dir).eos_token_id
    worst, same_next, same_answer = 0.0, 0, 0
    with torch.inference_mode():
        for ids in prompts:
            batch = torch.tensor([ids])
            a, b = merged(batch).logits[0, -1], exported(batch).logits[0, -1]
            worst = max(worst, float((a - b).abs().max()))
            same_next += int(a.argmax() == b.argmax())
            answers = [model.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=CHECK_NEW_TOKENS,
                                      do_sample=False, eos_token_id=eos, pad_token_id=eos)[0, len(ids):].tolist()
                       for model in (merged, exported)]
            same_answer += int(answers[0] == answers[1])
    return RoundTrip(len(prompts), worst, same_next / len(prompts), same_answer / len(prompts))


def export_production(production: Path, base: Path, eval_file: Path, out: Path, outtype: str = "f16",
                      prompts: int = CHECK_PROMPTS) -> dict[str, Any]:
    """Write out/merged (safetensors), out/model.gguf, out/Modelfile and out/export.json (the round trip), swapped
    in whole; a GGUF whose greedy next tokens disagree with the merged model on a held-out prompt is not kept."""
    bundle = Bundle.read(production)
    weights = (production / "adapter_config.json").is_file() or (production / "config.json").is_file()
    if not weights and bundle is None:
        raise UserError(f"{production} holds no promoted model yet; run `dvc repro` until one is promoted")
    if bundle is not None and bundle.recipe.retrieval_k:
        raise UserError(f"{production} is a {bundle.approach} bundle: it searches its retrieval index for every "
                        "request, which a GGUF file and an Ollama Modelfile cannot do. Serve it with `tailor serve` "
                        "(docs/serving.md), or ship another approach (promote.approach)")
    prompter = None if bundle is None else Prompter(production, bundle)
    report: dict[str, Any] = {}

    def write(staging: Path) -> None:
        staging.mkdir(parents=True)
        merged = staging / "merged"
        if (production / "adapter_config.json").is_file():
            write_merged(base, production, merged)
        elif weights:  # full fine-tuning: production is already a standalone model
            shutil.copytree(production, merged)
        else:  # a bundle on the base model's weights (prompted): the base model, with its prompt in the Modelfile
            shutil.copytree(base, merged)
        tokenizer = AutoTokenizer.from_pretrained(merged)
        # The GGUF's chat template renders tool definitions, calls, results and traces as training did (a plain
        # conversation as before), so that llama.cpp and other Jinja readers keep the model's tool calling.
        tokenizer.chat_template = hermes.with_tools(tokenizer.chat_template, keep_reasoning=True)
        tokenizer.save_pretrained(merged)
        convert_to_gguf(merged, staging / GGUF_FILE, outtype)
        (staging / "Modelfile").write_text(ollama_modelfile(tokenizer, bundle), encoding="utf-8")
        check = round_trip(merged, staging / GGUF_FILE, check_prompts(eval_file, tokenizer, prompts, prompter))
        report.update(source=str(production), approach=bundle.approach if bundle else "adapter (no bundle)",
                      outtype=outtype, converter=CONVERTER_PACKAGE, **vars(check))
        if check.next_token_agreement < 1.0:
            raise UserError(f"the GGUF disagrees with the merged model on the next token for "
                            f"{1 - check.next_token_agreement:.0%} of held-out prompts (largest logit difference "
                            f"{check.max_abs_logit_difference:.3g}); try --outtype f32; {out} was not changed")
        (staging / "export.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    write_dir_atomically(out, write)
    return report
