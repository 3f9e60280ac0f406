"""One tokenizer of a cross-tokenizer datamodule: how it encodes sample text, with byte offsets.

:class:`TokenizerSide` wraps a student's or a teacher's tokenizer with what
:mod:`datamodules.cross_tokenizer` needs to encode a sample on that side (its own prefix tokens,
EOS, byte-level flag, chat-template parts); :func:`teacher_sides` builds the teachers' sides from
``teacher_tokenizer`` (one path, or ``{name: path}``).
"""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_warn

from datamodules.alignment import char_to_byte_offsets, is_byte_level, token_byte_lengths
from datamodules.cross_tokenizer_batch import NO_OFFSET
from datamodules.text import special_prefix
from datamodules.tokenizer_training import load_tokenizer
from lit_distill.errors import ConfigError

_PROMPT_MARK, _RESPONSE_MARK = "\ue000PROMPT\ue000", "\ue000RESPONSE\ue000"


class TokenizerSide:
    """One tokenizer with what encoding needs: prefix, EOS, byte-level flag, chat-template parts."""

    def __init__(self, name: str, path: str, pad_token: str | None, chat_template: bool, member: str | None = None):
        self.name = name
        where = "" if member is None else f".{member}"  # a named teacher's entry in the dicts
        try:
            self.tok = load_tokenizer(path, pad_token)
        except ConfigError as err:
            if "no pad token" not in str(err):
                raise
            raise ConfigError(
                f"{name}_tokenizer{where} {path!r} has no pad token; set data.init_args.{name}_pad_token{where} "
                "(e.g. to its EOS token or to a new token like '<pad>')"
            ) from err
        self.prefix = special_prefix(self.tok)
        self.eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        self.byte_level = is_byte_level(self.tok)
        self.added_ids = set(self.tok.get_added_vocab().values())
        self.chat_parts: tuple[str, str, str] | None = None
        if chat_template:
            if getattr(self.tok, "chat_template", None):
                self.chat_parts = self._chat_parts()
            else:
                rank_zero_warn(
                    f"{name}_chat_template=true but {name}_tokenizer {path!r} has no chat template;"
                    " pairs are encoded as prompt + response on that side"
                )

    def _chat_parts(self) -> tuple[str, str, str]:
        """``(head, middle, tail)`` of the rendered conversation around prompt and response."""
        messages = [
            {"role": "user", "content": _PROMPT_MARK},
            {"role": "assistant", "content": _RESPONSE_MARK},
        ]
        rendered = self.tok.apply_chat_template(messages, tokenize=False)
        head, _, rest = rendered.partition(_PROMPT_MARK)
        middle, _, tail = rest.partition(_RESPONSE_MARK)
        if rendered.count(_PROMPT_MARK) != 1 or rendered.count(_RESPONSE_MARK) != 1 or not rest:
            raise ConfigError(
                f"the chat template of {self.name}_tokenizer does not insert message contents "
                f"verbatim; set data.init_args.{self.name}_chat_template=false"
            )
        return head, middle, tail

    def count(self, text: str) -> int:
        """Number of tokens of ``text`` (no special tokens)."""
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` and their byte offsets into ``text.encode()``."""
        if not text:
            return [], []
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        lengths = token_byte_lengths(self.tok, ids, self.byte_level, self.added_ids)
        return ids, char_to_byte_offsets(text, enc["offset_mapping"], lengths)

    def build(self, parts: list[tuple[str, object, int, bool]]):
        """Concatenate parts into ``(ids, is_target, byte_offsets, n_target_text_tokens)``.

        A part is ``("ids", ids, _, target)`` (special tokens), ``("chrome", text, _, target)``
        (template text, no offsets) or ``("text", text, byte_base, target)`` (raw sample text).
        """
        ids: list[int] = []
        tgt: list[bool] = []
        offs: list[tuple[int, int]] = []
        n_text_targets = 0
        for kind, payload, base, target in parts:
            if kind == "ids":
                new, new_offs = list(payload), [NO_OFFSET] * len(payload)
            else:
                new, new_offs = self.encode(payload)
                if kind == "chrome":
                    new_offs = [NO_OFFSET] * len(new)
                else:
                    new_offs = [(s + base, e + base) for s, e in new_offs]
                    n_text_targets += len(new) if target else 0
            ids += new
            offs += new_offs
            tgt += [target] * len(new)
        if tgt:
            tgt[0] = False  # a sample's first token is never a target
        return ids, tgt, offs, n_text_targets

    def document(self, text: str, last: bool):
        """Parts of a plain-text document piece."""
        return [("ids", self.prefix, 0, False), ("text", text, 0, True),
                ("ids", self.eos if last else [], 0, True)]

    def pair(self, prompt: str, response: str, ended: bool = True):
        """Parts of a prompt/response pair (response bytes start after the prompt's).

        ``ended=False`` (a generated answer cut at its token budget) leaves out what follows the
        response: the EOS, or the chat template's tail.
        """
        base = len(prompt.encode("utf-8"))
        if self.chat_parts is None:
            return [("ids", self.prefix, 0, False), ("text", prompt, 0, False),
                    ("text", response, base, True), ("ids", self.eos if ended else [], 0, True)]
        head, middle, tail = self.chat_parts
        return [("chrome", head, 0, False), ("text", prompt, 0, False), ("chrome", middle, 0, False),
                ("text", response, base, True), ("chrome", tail if ended else "", 0, True)]


def teacher_sides(tokenizers: str | dict[str, str], pad_tokens: str | dict[str, str] | None,
                   chat_template: bool) -> dict[str, TokenizerSide]:
    """The teachers' sides by name (``"teacher"`` for one unnamed teacher)."""
    if not isinstance(tokenizers, dict):
        if isinstance(pad_tokens, dict):
            raise ConfigError("teacher_pad_token: a {name: token} dict needs teacher_tokenizer as a "
                              "{name: tokenizer} dict")
        return {"teacher": TokenizerSide("teacher", tokenizers, pad_tokens, chat_template)}
    if not tokenizers:
        raise ConfigError("teacher_tokenizer: give at least one {name: tokenizer} entry")
    for name in tokenizers:
        if not name or "." in name:
            raise ConfigError(f"teacher_tokenizer: teacher name '{name}' must be non-empty and without dots")
    if isinstance(pad_tokens, dict) and set(pad_tokens) - set(tokenizers):
        raise ConfigError(f"teacher_pad_token: {sorted(set(pad_tokens) - set(tokenizers))} are not teachers "
                          f"(teachers: {sorted(tokenizers)})")
    pads = pad_tokens if isinstance(pad_tokens, dict) else dict.fromkeys(tokenizers, pad_tokens)
    return {name: TokenizerSide("teacher", path, pads.get(name), chat_template, member=name)
            for name, path in tokenizers.items()}
