"""Token-faithful export: the token ids a trainer will see, with the assistant loss mask and the RL split.

For one chat template and one tokenizer, each conversation becomes ``input_ids`` + ``assistant_masks`` (the columns
TRL's SFTTrainer takes as already tokenised) and ``prompt_ids`` / ``response_ids`` / ``response_mask`` for RL
trainers that roll out turn by turn (tool results inside the response are masked out).

The export is checked, not assumed: the conversation is rendered one message at a time (the generation prompt
before each assistant turn), every partial rendering must be a prefix of the full one, and the concatenated
per-turn tokens must equal the tokens of the trainer's own rendering (``apply_chat_template`` of the whole
conversation). A conversation that fails is not exported; :class:`TokenIssue` says why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from astra.synthesis.trajectories._templates import ChatTemplate


class TokenIssue(StrEnum):
    """Why per-turn rendering does not reproduce the trainer's tokens."""

    TEMPLATE_ERROR = "template_error"
    PAST_REASONING_DROPPED = "past_reasoning_dropped"  # earlier turns' reasoning vanishes once a new query comes
    LAST_MESSAGE_RENDERED_DIFFERENTLY = "last_message_rendered_differently"  # e.g. a think block only when last
    GENERATION_PROMPT_DIFFERS = "generation_prompt_differs"  # the assistant turn does not start as the prompt ends
    CONTEXT_REWRITTEN = "context_rewritten"  # a later message changes earlier text (tools / system moved)
    TOKEN_BOUNDARY = "token_boundary"  # same text, but tokens merge across a turn boundary


class TokenSample(BaseModel):
    id: str
    template: str
    input_ids: list[int]
    assistant_masks: list[int] = Field(description="1 on tokens the assistant wrote (loss), 0 elsewhere")
    prompt_ids: list[int] = Field(description="up to and including the first assistant generation prompt")
    response_ids: list[int]
    response_mask: list[int] = Field(description="1 on assistant tokens of the response, 0 on tool results / users")


class TokenReport(BaseModel):
    template: str
    samples: int = 0
    exported: int = 0
    mismatches: dict[str, int] = Field(default_factory=dict, description="cause -> samples")
    examples: dict[str, str] = Field(default_factory=dict)

    @property
    def mismatch_rate(self) -> float:
        return 0.0 if not self.samples else round(1 - self.exported / self.samples, 4)


class TokenMismatch(Exception):
    def __init__(self, issue: TokenIssue, detail: str) -> None:
        super().__init__(f"{issue}: {detail}")
        self.issue = issue
        self.detail = detail


def gguf_tokenizer(path: str | Path, template: ChatTemplate | None = None) -> Any:
    """A transformers fast tokenizer built from the vocabulary in a GGUF file, without torch.

    Uses the ``gguf`` reader and transformers' own GGUF tokenizer converter (``convert_gguf_tokenizer``);
    ``template`` sets the chat template, the BOS / EOS tokens its text refers to, and keeps the control tokens
    it writes (``[INST]``, ``<|eot_id|>``) whole when this vocabulary lacks them."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend_json, tokens, bos_id, eos_id, stored_template = _gguf_vocabulary(str(Path(path).resolve()))
    backend = Tokenizer.from_str(backend_json)  # a fresh copy: adding tokens below must not leak between templates
    bos = template.bos_token if template else tokens[bos_id]
    eos = template.eos_token if template else tokens[eos_id]
    chat_template = template.source if template else stored_template
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos or None, eos_token=eos or None,
                                        chat_template=chat_template)
    if template is not None:  # another model's template: its control tokens stay whole, as in that model's vocabulary
        missing = [t for t in template.control_tokens if t not in tokenizer.get_vocab()]
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer


def _smollm_pre_tokenizer() -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


# llama.cpp pre-tokenizer names transformers' GGUF converter does not know (it falls back to GPT-2's split, which
# tokenises runs of spaces before digits differently): SmolLM2's own split, as in its tokenizer.json and llama.cpp.
_PRE_TOKENIZERS = {"smollm": _smollm_pre_tokenizer}


@lru_cache(maxsize=4)
def _gguf_vocabulary(path: str) -> tuple[str, list[str], int, int, str]:
    from gguf import GGUFReader
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_PRE_TOKENIZER_SPLITS,
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    fields = GGUFReader(path).fields
    renames = GGUF_TOKENIZER_MAPPING["tokenizer"]
    tokenizer_dict = {name: fields[f"tokenizer.{key}"].contents() for key, name in renames.items()
                      if f"tokenizer.{key}" in fields}
    backend, _ = convert_gguf_tokenizer(fields["general.architecture"].contents(), tokenizer_dict)
    pre = tokenizer_dict.get("pre_tokenizer_type")
    if pre in _PRE_TOKENIZERS and pre not in GGUF_PRE_TOKENIZER_SPLITS:
        backend.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    stored = fields["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in fields else ""
    return (backend.to_str(), list(tokenizer_dict["tokens"]), tokenizer_dict["bos_token_id"],
            tokenizer_dict["eos_token_id"], stored)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _cause_of_break(template: ChatTemplate, tools: list[dict[str, Any]] | None, messages: list[dict[str, Any]],
                    k: int, cut: str, full: str, generation: bool) -> TokenIssue:
    """Why the rendering of ``messages[:k]`` (``cut``) is not a prefix of the full one."""
    reasoning = [m.get("reasoning_content") for m in messages[:k] if m["role"] == "assistant"]
    if any(r and r in cut and r not in full for r in reasoning):
        return TokenIssue.PAST_REASONING_DROPPED
    start = k - 1  # the trailing run of same-role messages (parallel tool results) counts as the last message
    while start > 0 and messages[start - 1]["role"] == messages[k - 1]["role"]:
        start -= 1
    try:
        context = template.render(messages[:k], tools) if generation else cut
        before = template.render(messages[:start], tools) if start > 0 else ""
    except Exception:
        return TokenIssue.CONTEXT_REWRITTEN
    if generation and full.startswith(context):
        return TokenIssue.GENERATION_PROMPT_DIFFERS
    # where the partial rendering leaves the full one: inside its last message, or earlier (text moved / rewritten)
    diverge = next((i for i, (a, b) in enumerate(zip(context, full, strict=False)) if a != b), len(context))
    if full.startswith(before) and diverge >= len(before):
        return TokenIssue.LAST_MESSAGE_RENDERED_DIFFERENTLY
    return TokenIssue.CONTEXT_REWRITTEN


def token_sample(template: ChatTemplate, tokenizer: Any, sample_id: str, messages: list[dict[str, Any]],
                 tools: list[dict[str, Any]] | None) -> TokenSample:
    """The token-faithful record of one (template-adapted) conversation; raises :class:`TokenMismatch`."""
    try:
        full = template.render(messages, tools)
        trainer_ids = list(tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=True,
                                                         return_dict=True)["input_ids"])
    except Exception as exc:
        raise TokenMismatch(TokenIssue.TEMPLATE_ERROR, f"{type(exc).__name__}: {exc}"[:200]) from exc
    # cut points: the generation prompt before each assistant turn, and the end of that turn
    cuts: list[tuple[int, bool]] = []  # (character offset, the segment that ends here is assistant-written)
    position = 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        for generation in (True, False):
            try:
                text = (template.render(messages[:k], tools, add_generation_prompt=True) if generation
                        else full if k == len(messages) - 1 else template.render(messages[:k + 1], tools))
            except Exception as exc:
                raise TokenMismatch(TokenIssue.TEMPLATE_ERROR, f"{type(exc).__name__}: {exc}"[:200]) from exc
            if not full.startswith(text) or len(text) < position:
                issue = _cause_of_break(template, tools, messages, k if generation else k + 1, text, full, generation)
                raise TokenMismatch(issue, f"{'before' if generation else 'after'} message {k} (assistant)")
            cuts.append((len(text), not generation))
            position = len(text)
    cuts.append((len(full), False))
    ids: list[int] = []
    mask: list[int] = []
    start = 0
    prompt_length: int | None = None
    for end, assistant in cuts:
        piece = _encode(tokenizer, full[start:end]) if end > start else []
        if assistant and prompt_length is None:
            prompt_length = len(ids)
        ids += piece
        mask += [1 if assistant else 0] * len(piece)
        start = end
    if ids != trainer_ids:
        at = next((i for i, (a, b) in enumerate(zip(ids, trainer_ids, strict=False)) if a != b),
                  min(len(ids), len(trainer_ids)))
        raise TokenMismatch(TokenIssue.TOKEN_BOUNDARY, f"token {at} of {len(trainer_ids)}")
    prompt_length = len(ids) if prompt_length is None else prompt_length
    return TokenSample(id=sample_id, template=template.name, input_ids=ids, assistant_masks=mask,
                       prompt_ids=ids[:prompt_length], response_ids=ids[prompt_length:],
                       response_mask=mask[prompt_length:])


def token_samples(template: ChatTemplate, tokenizer: Any,
                  conversations: Sequence[tuple[str, list[dict[str, Any]], list[dict[str, Any]] | None]]
                  ) -> tuple[list[TokenSample], TokenReport]:
    """Token-faithful records of ``(id, messages, tools)`` conversations, with the mismatches by cause."""
    report = TokenReport(template=template.name, samples=len(conversations))
    out: list[TokenSample] = []
    causes: Counter[str] = Counter()
    for sample_id, messages, tools in conversations:
        try:
            out.append(token_sample(template, tokenizer, sample_id, messages, tools))
        except TokenMismatch as exc:
            causes[exc.issue] += 1
            report.examples.setdefault(exc.issue, exc.detail)
    report.exported, report.mismatches = len(out), dict(causes)
    return out, report
