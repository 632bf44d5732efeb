"""What a run will ask, decided before the device is touched: the prompt set, the exact line sent for each prompt
(checked as the runner and the app would check it, each error with its FILE:LINE), the model's token counter and
the app's prompt format, and per line what simple_app reads past the prompt.

Every refusal is a :class:`PlanError` with one line naming the file, key or value and the fix; the run stage turns
it into its own error, so a bad prompt costs nothing on the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config, budget
from pipeline.run.runner import RunItem
from pipeline.workspace import shared_root


class PlanError(Exception):
    """A prompt set, template or tokenizer the run cannot use (the message says which and what to do)."""


def prompt_tokenizer(cfg: Config, fetch: dict, push: dict) -> tuple[Any, Any]:
    """The model's token counter (answers) and the app's prompt format (what it feeds per line) on the host."""
    from pipeline.apps.simple_app import model_type_of
    from pipeline.models.count import TokenizerNotFound, TokenizerUnreadable, token_counter
    from pipeline.models.tokenizer_bin import TokenizerBinError
    from pipeline.prompt_model.prompt_format import PromptFormatError, load_format

    local = Path(fetch["model"]["local_dir"])
    try:
        counter = token_counter(local)
    except (TokenizerNotFound, TokenizerUnreadable) as e:
        raise PlanError(str(e)) from None
    try:
        return counter, load_format(cfg.app.template, local,
                                    gemma=model_type_of(push["model"]["remote_dir"]) == "gemma")
    except PromptFormatError as e:
        raise PlanError(f"app.template={cfg.app.template}: {e}") from None
    except (TokenizerBinError, OSError, ValueError) as e:
        raise PlanError(f"{local}: the model's tokenizer cannot be read ({e}) — re-run fetch") from None


def load_prompt_set(cfg: Config, count_tokens: Any) -> tuple[list, dict | None]:
    """The configured prompt set (file, a benchmark's package file, or generator), validated; `prompts.limit` keeps
    the first N. Also where a benchmark's set came from (package, version, file, sha256, stride, limit: run.json
    ``prompt_source``), None for odeval's own sets."""
    from pipeline.run.prompts import PromptSetError, length_prompts, load_prompts

    pr = cfg.prompts
    source = None
    try:
        if pr.generator == "length":
            prompts = length_prompts(budget(cfg).context, count_tokens, n=pr.n or 5)
        elif pr.format == "ifeval":
            from pipeline.run.prompt_sources import load_prompt_source

            prompts, source = load_prompt_source(pr, shared_root())
        else:
            path = Path(pr.path or "")
            prompts = load_prompts(path if path.is_absolute() else shared_root() / path, set_name=pr.name,
                                   newlines=pr.newlines)
    except PromptSetError as e:
        raise PlanError(str(e)) from None
    prompts = prompts[: pr.limit] if pr.limit else prompts
    if source is not None:
        source |= {"limit": pr.limit, "run": len(prompts), "joined": sum("joined" in p.tags for p in prompts)}
    return prompts, source


def checked_items(cfg: Config, prompts: list, count_tokens: Any, count_prompt: Any) -> list[RunItem]:
    """The lines to send, checked as the runner and the app would, with the prompt's FILE:LINE in every error.
    The budget is the prompt set's own where it sets one (``pipeline.config.budget``: prompts=ifeval)."""
    from pipeline.run.prompts import PromptSetError, sent_lines

    b = budget(cfg)
    try:
        sent = sent_lines(prompts, cfg.prompting.template, count_tokens, b.context,
                          f"the line sent (prompting={cfg.prompting.name})", count_prompt=count_prompt,
                          positions=cfg.model.max_seq_len - b.max_new_tokens)
    except PromptSetError as e:
        raise PlanError(str(e)) from None
    if cfg.app.protocol == "llama-cpp":  # its line reader has two control characters of its own
        from pipeline.apps.llama_cpp import check_llama_line
        from pipeline.apps.simple_app_output import SimpleAppError

        for p, line in zip(prompts, sent, strict=True):
            try:
                check_llama_line(line)
            except SimpleAppError as e:
                raise PlanError(f"prompt {p.id!r} ({cfg.prompts.name}): {e}") from None
    return [RunItem(p.id, p.prompt, line) for p, line in zip(prompts, sent, strict=True)]


def past_end_rows(cfg: Config, fmt: Any, items: list[RunItem]) -> dict[str, dict]:
    """Per sent line, the row's ``past_end`` {case, id_fed, index}: the same buffer model the reference app feeds
    from (pipeline/prompt_model/prompt_buffer.py). For the real simple_app it is the model of what the phone does: a
    never-written slot's id is unknowable there, so ``id_fed`` is null for case ``unwritten``."""
    from pipeline.prompt_model.prompt_buffer import past_end

    a = cfg.app
    if a.protocol != "simple_app":
        return {}  # llama.cpp reads nothing past the prompt
    setting, fallback = (a.past_end_token, a.past_end_unwritten_id) if a.virtual_only else ("faithful", None)
    try:
        return {it.sent_text: past_end(fmt, setting, it.sent_text, fallback).to_row() for it in items}
    except ValueError as e:  # PromptFormatError: a template whose prefix/suffix cannot be told from the line
        raise PlanError(f"app.past_end_token={setting}: {e}") from None
