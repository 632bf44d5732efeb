"""Offline tiny Llama models: tokenizer + weights built locally, deterministically, with no network.

WHY: the seed's question ("is an off-topic answer the model, its quantisation, or the app's prompting?") must be
reproducible without a phone or the Hub. ``tiny-fp`` memorises the train-tagged ``qa`` items and the ``smoke``
items (answers in ``data/answers.json``), always with BOS like TinyLlama; ``tiny-w8/w4/w2`` are the same weights
fake-quantised per output channel (symmetric); ``tiny-random`` is untrained. Everything is cached by a content key
(code + data + versions) so the quantised variants reuse one training run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.models.tokenizer_bin import bytes_to_unicode, export_tokenizer_bin

MODEL_NAMES = ("tiny-fp", "tiny-w8", "tiny-w4", "tiny-w2", "tiny-random")
QUANT_BITS = {"tiny-fp": None, "tiny-w8": 8, "tiny-w4": 4, "tiny-w2": 2, "tiny-random": None}
DATA_DIR = Path(__file__).resolve().parent / "data"
# The qa and smoke sets as tiny-fp learned them: a snapshot of prompts/qa.jsonl and prompts/smoke.jsonl (a test
# keeps them equal in this repo). WHY a snapshot: the model under test must not change when a user edits the
# prompt set it is evaluated on — an edited prompt is re-asked, it does not retrain the model.
TRAIN_SETS = {"qa": DATA_DIR / "prompts_qa.jsonl", "smoke": DATA_DIR / "prompts_smoke.jsonl"}
SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 like Llama: simple_app stops on 0/1/2
USER, ASSISTANT = "<|user|>\n", "\n<|assistant|>\n"  # the template is USER + prompt + "</s>" + ASSISTANT
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


class TinyModelError(Exception):
    """A tiny model could not be built, loaded or evaluated."""


@dataclass(frozen=True)
class TinySpec:
    """Hyper-parameters of the tiny family (part of the cache key)."""

    seed: int = 1234
    vocab_size: int = 512
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    max_seq_len: int = 1024
    steps: int = 75
    lr: float = 3e-3
    train_threads: int = 1  # fixed: float reductions must not depend on the host's core count


SPEC = TinySpec()


@dataclass(frozen=True)
class Example:
    """One chat example: prompt, the answer the model is trained on, and accepted aliases for scoring."""

    id: str
    prompt: str
    answer: str
    aliases: tuple[str, ...]
    tags: tuple[str, ...]


def _read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise TinyModelError(f"{path}: cannot read prompt set ({exc}); restore it from git") from exc


def load_examples(split: str = "train") -> list[Example]:
    """``train``: train-tagged qa + smoke (what tiny-fp learns); ``heldout``: heldout qa; ``qa-train``: train qa.

    WHY built from (a snapshot of) the prompt files: the sets and the model must agree on prompts and references.
    """
    answers = json.loads((DATA_DIR / "answers.json").read_text(encoding="utf-8"))
    qa = _read_jsonl(TRAIN_SETS["qa"])
    smoke = _read_jsonl(TRAIN_SETS["smoke"])
    out: list[Example] = []
    for item in qa + smoke:
        tags = tuple(item.get("tags", []))
        ref = item.get("reference", [])
        aliases = tuple([ref] if isinstance(ref, str) else ref)
        is_train = item["id"] in answers and "heldout" not in tags
        if item in smoke and split == "qa-train":
            continue
        if (split in ("train", "qa-train") and is_train) or (split == "heldout" and "heldout" in tags):
            answer = answers.get(item["id"]) or (aliases[0] if aliases else "")
            out.append(Example(item["id"], item["prompt"], answer, aliases or tuple(item.get("keywords", [])), tags))
    if split not in ("train", "qa-train", "heldout"):
        raise TinyModelError(f"split={split!r}: use train, qa-train or heldout")
    return out


def contains_answer(text: str, aliases: tuple[str, ...] | list[str]) -> bool:
    """Case-insensitive containment on word boundaries ("4" is not in "42", "Rome" not in "Romeo")."""
    low = text.lower()
    return any(re.search(r"(?<!\w)" + re.escape(a.lower()) + r"(?!\w)", low) for a in aliases if a)


# ----------------------------------------------------------------------------------------------- cache / keys
def cache_root() -> Path:
    """The machine-wide cache (:func:`pipeline.workspace.cache_home`; models live under ``models/``)."""
    from pipeline.workspace import cache_home

    return cache_home()


def content_key(spec: TinySpec = SPEC) -> str:
    """Hash of everything that determines the bytes: code (this module's whole import closure), data (with the
    snapshot of the prompt sets it trains on), hyper-parameters, library versions.

    The versions come from the installed distributions' metadata (the same strings as ``torch.__version__`` etc.):
    importing torch + transformers only to read them cost every warm-cache fetch ~2.5 s."""
    from pipeline.codehash import code_files, digest, library_versions

    h = hashlib.sha256()
    for f in sorted(DATA_DIR.iterdir()):  # answers, corpus, the snapshot of the prompt sets
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(json.dumps(spec.__dict__, sort_keys=True).encode())
    versions = library_versions("torch", "transformers", "tokenizers", "safetensors", "numpy")
    h.update(digest(code_files("pipeline.models.tiny"), json.dumps(versions, sort_keys=True)).encode())
    return h.hexdigest()


@contextlib.contextmanager
def _deterministic_torch(threads: int) -> Iterator[None]:
    """Fixed thread count + deterministic algorithms for the duration of a build (restored afterwards)."""
    import torch

    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


# ----------------------------------------------------------------------------------------------- tokenizer
def _tokenizer_texts(examples: list[Example]) -> list[str]:
    corpus = (DATA_DIR / "corpus.txt").read_text(encoding="utf-8").splitlines()
    chats = [f"{USER}{e.prompt}" for e in examples] + [f"{ASSISTANT}{e.answer}" for e in examples]
    return chats * 4 + [line for line in corpus if line.strip()]


def build_tokenizer(examples: list[Example], spec: TinySpec = SPEC) -> str:
    """Train a byte-level BPE and return its ``tokenizer.json`` text.

    WHY the id remap: ids 0-2 are <unk>/<s>/</s>, ids 3..258 are the 256 bytes in byte order and merged tokens
    follow in merge order. That makes llama2.c's byte fallback (id = byte + 3) and merge-by-score (-rank) give
    exactly the HF ids, so ``tokenizer.bin`` tokenises like the app on the phone would.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(_tokenizer_texts(examples), trainer=trainer)
    trained = json.loads(raw.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    b2u = bytes_to_unicode()
    vocab: dict[str, int] = {s: i for i, s in enumerate(SPECIALS)}
    for b in range(256):
        vocab[b2u[b]] = 3 + b
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    if len(vocab) != spec.vocab_size:
        raise TinyModelError(f"tokenizer has {len(vocab)} tokens, expected vocab_size={spec.vocab_size}; "
                             "add text to pipeline/models/data/corpus.txt")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return tok.to_str(pretty=True)


def _encode(tok: Any, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def chat_ids(tok: Any, prompt: str, bos: bool) -> list[int]:
    """simple_app's template for our tokenizer.

    [BOS?] + enc("<|user|>\\n") + enc(prompt) + enc("</s>\\n<|assistant|>\\n"), "</s>" being the EOS id.
    """
    return ([1] if bos else []) + _encode(tok, USER) + _encode(tok, prompt) + [2] + _encode(tok, ASSISTANT)


# ----------------------------------------------------------------------------------------------- model
def _config(spec: TinySpec) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=spec.vocab_size, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                       num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
                       max_position_embeddings=spec.max_seq_len, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, dtype="float32")


def _train(model: Any, tok: Any, examples: list[Example], spec: TinySpec) -> float:
    """Full-batch AdamW on answer tokens (+EOS) of BOS-prefixed chat examples; returns the final loss."""
    import torch

    seqs, masks = [], []
    for e in examples:
        prompt = chat_ids(tok, e.prompt, bos=True)
        answer = _encode(tok, e.answer) + [2]
        seqs.append(prompt + answer)
        masks.append([0] * len(prompt) + [1] * len(answer))
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    labels = ids.clone()
    labels[torch.tensor([m + [0] * (width - len(m)) for m in masks]) == 0] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(spec.steps):
        opt.zero_grad()
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def fake_quantize_(model: Any, bits: int) -> int:
    """Per-output-channel symmetric fake quantisation of every Linear weight (decoder + lm_head), in place.

    Embeddings and norms stay FP (weight-only quantisation of the matmuls). Returns how many tensors changed.
    """
    import torch

    qmax = 2 ** (bits - 1) - 1
    n = 0
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight
                scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / qmax
                w.copy_(torch.clamp(torch.round(w / scale), -qmax, qmax) * scale)
                n += 1
    return n


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_model_dir(model: Any, tok_json: str, out: Path, provenance: dict) -> None:
    """Write every file with stable bytes (sorted JSON, fixed safetensors metadata) and a provenance model.json."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    state = {k: v.detach().contiguous().clone() for k, v in sorted(model.state_dict().items())}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", "pad_token": "</s>", "model_max_length": SPEC.max_seq_len,
               "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE}
    _write_json(out / "tokenizer_config.json", tok_cfg)
    _write_json(out / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                                  "pad_token": "</s>"})
    _write_json(out / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                                                 "do_sample": False})
    export_tokenizer_bin(out / "tokenizer.json", out / "tokenizer.bin")
    files = sorted(p.name for p in out.iterdir() if p.name != "model.json")
    digest = hashlib.sha256("".join(f"{n}\0{_file_sha(out / n)}\n" for n in files).encode()).hexdigest()
    _write_json(out / "model.json", {**provenance, "files": {n: _file_sha(out / n) for n in files},
                                     "content_sha256": digest})


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _build_variant(name: str, dest: Path, key: str, spec: TinySpec) -> None:
    """Build one model dir into ``dest`` (``tiny-fp`` trains; quantised variants load the cached FP weights)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    examples = load_examples("train")
    bits = QUANT_BITS[name]
    loss: float | None = None
    with _deterministic_torch(spec.train_threads):
        if name in ("tiny-fp", "tiny-random"):
            tok_json = build_tokenizer(examples, spec)
            tok = Tokenizer.from_str(tok_json)
            torch.manual_seed(spec.seed)
            model = LlamaForCausalLM(_config(spec))
            if name == "tiny-fp":
                loss = _train(model, tok, examples, spec)
        else:
            fp_dir = ensure_cached("tiny-fp", spec)
            tok_json = (fp_dir / "tokenizer.json").read_text(encoding="utf-8")
            model = LlamaForCausalLM.from_pretrained(fp_dir, dtype=torch.float32)
            fake_quantize_(model, bits)
            loss = json.loads((fp_dir / "model.json").read_text())["final_train_loss"]
    params = sum(p.numel() for p in model.parameters())
    provenance = {"name": name, "seed": spec.seed, "steps": 0 if name == "tiny-random" else spec.steps,
                  "quant_bits": bits, "quant_scheme": "per-output-channel symmetric, Linear weights" if bits else None,
                  "param_count": params, "spec": spec.__dict__, "train_examples": len(examples),
                  "train_with_bos": True, "final_train_loss": loss, "content_key": key,
                  "architecture": "LlamaForCausalLM", "tokenizer": "byte-level BPE (tokenizers)"}
    _write_model_dir(model, tok_json, dest, provenance)


def ensure_cached(name: str, spec: TinySpec = SPEC) -> Path:
    """Return the cached dir of ``name``, building it once (file-locked, atomic rename) if absent."""
    from filelock import FileLock

    if name not in MODEL_NAMES:
        raise TinyModelError(f"model name {name!r} is unknown; choose one of {', '.join(MODEL_NAMES)}")
    key = content_key(spec)
    root = cache_root() / "models"
    final = root / f"{name}-{key[:16]}"
    if (final / "model.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{name}-{key[:16]}.lock")):
        if (final / "model.json").is_file():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            _build_variant(name, tmp, key, spec)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_model(name: str, out: Path) -> Path:
    """Build (or reuse from cache) model ``name`` and copy its files into ``out``; returns ``out``."""
    src = ensure_cached(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        dst = out / f.name
        if dst.is_file() and dst.stat().st_size == f.stat().st_size and dst.read_bytes() == f.read_bytes():
            continue  # unchanged: keep the file (and its mtime, so host hash caches stay warm)
        tmp = out / f".{f.name}.tmp-{os.getpid()}"
        shutil.copyfile(f, tmp)
        os.replace(tmp, dst)  # atomic: a parallel job reading the dir never sees a half-written file
    return out


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate(model_dir: Path, items: list[Example], bos: bool, max_new_tokens: int = 32) -> dict[str, Any]:
    """Greedy answers under simple_app's template (optionally with BOS) and teacher-forced answer NLL.

    accuracy: fraction whose answer contains a reference alias (word boundaries); nll: mean per-token negative
    log-likelihood of the training answer + EOS. WHY both: memorised answers survive W4 unchanged, only NLL
    orders the quantisation ladder.
    """
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    model_dir = Path(model_dir)
    try:
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    except (OSError, ValueError) as exc:
        raise TinyModelError(f"{model_dir}: cannot load model ({exc}); "
                             "rebuild with python -m pipeline.models build") from exc
    hits, nll_sum, nll_n, answers = 0, 0.0, 0, []
    with torch.inference_mode():
        for e in items:
            prompt = chat_ids(tok, e.prompt, bos)
            gen: list[int] = []
            ids = torch.tensor([prompt])
            out = model(input_ids=ids, use_cache=True)
            for _ in range(max_new_tokens):
                nxt = int(out.logits[0, -1].argmax())
                if nxt in (0, 1, 2):
                    break
                gen.append(nxt)
                out = model(input_ids=torch.tensor([[nxt]]), cache=out.cache, use_cache=True)
            text = tok.decode(gen)
            answers.append(text)
            hits += contains_answer(text, e.aliases)
            target = _encode(tok, e.answer) + [2]
            full = torch.tensor([prompt + target])
            logp = torch.log_softmax(model(input_ids=full).logits[0, len(prompt) - 1 : -1].float(), dim=-1)
            nll_sum += float(-logp[torch.arange(len(target)), torch.tensor(target)].sum())
            nll_n += len(target)
    n = len(items)
    return {"n": n, "accuracy": hits / n if n else None, "nll": nll_sum / nll_n if nll_n else None,
            "answers": answers}


def ladder_table(names: tuple[str, ...] = MODEL_NAMES, split: str = "qa-train") -> list[dict[str, Any]]:
    """accuracy/NLL per model with and without BOS on ``split`` (the issue's quantisation-ladder table)."""
    items = load_examples(split)
    rows = []
    for name in names:
        d = ensure_cached(name)
        with_bos, no_bos = evaluate(d, items, bos=True), evaluate(d, items, bos=False)
        rows.append({"model": name, "n": len(items), "acc_bos": with_bos["accuracy"], "nll_bos": with_bos["nll"],
                     "acc_nobos": no_bos["accuracy"], "nll_nobos": no_bos["nll"]})
    return rows
