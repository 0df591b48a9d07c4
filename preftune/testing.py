"""Tiny, fully offline stand-ins for a real tokenizer and causal LM.

Tests, benchmarks and examples build these in-process in well under a second: a byte-level BPE
tokenizer trained on a few sentences (with a ChatML chat template, like SmolLM2's) and a small
random Llama. They exercise the same code paths as a real checkpoint because they *are* real
Hugging Face objects, only small.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A good movie with a great story and wonderful acting, I loved it.",
    "A bad movie with a boring story and terrible acting, I hated it.",
    "Write a short positive review of a film. Write a short negative review.",
    "user assistant system: hello, how are you? I am fine, thank you!",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and symbols - _ , . ; : ' \" ( ) [ ] { } ! ?",
    "yes no maybe good bad great awful excellent poor fine okay alpha beta gamma",
]


def tiny_tokenizer(vocab_size: int = 384, chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in-process; eos = '<|im_end|>', pad = '<pad>'.

    Byte-level means every string is encodable (no unknown tokens), as with GPT-2/SmolLM2.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
    )
    if chat_template:
        hf.chat_template = CHATML_TEMPLATE
    return hf


def tiny_llama(
    vocab_size: int,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    num_key_value_heads: int | None = None,
    **config_overrides,
) -> LlamaForCausalLM:
    """A randomly initialised Llama small enough to train in a test (≈ 30k parameters by default)."""
    import torch

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_key_value_heads or num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        **config_overrides,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def save_to_hub_cache(source: str | os.PathLike, repo_id: str, cache_dir: str | os.PathLike, *,
                      repo_type: str = "model", revision: str = "main") -> Path:
    """Write the files of folder ``source`` into a Hugging Face cache, as a download would have.

    The standard layout (huggingface_hub's ``file_download``): ``<cache_dir>/<type>s--<org>--<name>/``
    with ``blobs/<sha256>`` (the file contents), ``snapshots/<commit>/<path>`` (relative symlinks to the
    blobs) and ``refs/<revision>`` (the commit hash). The commit hash is derived from the contents, so
    the same files give the same commit. Returns the snapshot folder. Lets tests resolve Hub ids with
    ``HF_HUB_OFFLINE=1`` through the real huggingface_hub / transformers / datasets code.
    """
    source = Path(source)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    commit = hashlib.sha1(b"".join(p.relative_to(source).as_posix().encode() + p.read_bytes()
                                   for p in files)).hexdigest()
    storage = Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    for file in files:
        data = file.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / revision).write_text(commit)
    return snapshot


def write_dataset_repo(folder: str | os.PathLike, configs: dict[str, dict[str, list[dict]]]) -> Path:
    """A dataset repository as the Hub serves one: ``<config>/<split>-00000-of-00001.parquet`` files and a
    dataset card whose ``configs:`` header maps each config's splits to them (the layout of datasets
    converted to Parquet on the Hub). ``configs`` maps config name → split name → rows."""
    import datasets

    folder = Path(folder)
    card = ["---", "configs:"]
    for config, splits in configs.items():
        card += [f"- config_name: {config}", "  data_files:"]
        for split, rows in splits.items():
            (folder / config).mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_list(rows).to_parquet(str(folder / config / f"{split}-00000-of-00001.parquet"))
            card += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    (folder / "README.md").write_text("\n".join([*card, "---", "A dataset written by a test.", ""]))
    return folder
