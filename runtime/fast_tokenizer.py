"""A torch-free tokenizer for the server processes, built on the ``tokenizers`` library.

``transformers`` imports torch as soon as ``AutoTokenizer`` is imported, which the HTTP and detokenizer
processes must not do (memory, start-up time). ``FastTokenizer`` reads the same files a Hugging Face fast
tokenizer reads (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``) and offers the subset
of its API the runtime uses: ``encode``, ``decode``, ``apply_chat_template``, ``chat_template``, the special
token ids. For a tokenizer-backed Hugging Face tokenizer (every ``*TokenizerFast`` and, in transformers 5, the
default backend) ``encode``/``decode`` give the same ids and text (tests compare them on stories260K and
llama2-32k). A directory without ``tokenizer.json`` (slow sentencepiece-only tokenizers) falls back to
``transformers.AutoTokenizer`` — which loads torch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer

from radixgen.chat_templates import compile_chat_template

logger = logging.getLogger(__name__)

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
# transformers' clean_up_tokenization replacements
_CLEANUPS: tuple[tuple[str, str], ...] = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
    (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)


def load_tokenizer(path: str) -> Any:
    """The tokenizer of a model directory: a FastTokenizer, or a transformers tokenizer without tokenizer.json.
    (``--chat-template`` is resolved by the OpenAI routes, not here.)

    Args:
        path: directory with the tokenizer files.

    Raises:
        ValueError: the directory has no usable tokenizer (the message names ``tokenizer_path``).
    """
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        tok: Any = FastTokenizer(path)
    else:
        logger.warning("%s has no tokenizer.json; loading it with transformers (imports torch)", path)
        tok = load_hf_tokenizer(path)
    return tok


def load_hf_tokenizer(path: str) -> Any:
    """A ``transformers`` tokenizer (imports torch): for processes that already hold torch and need what the
    grammar backends need (the scheduler process, the offline Engine), loaded once and shared there. ``path``
    may be a GGUF model (a ``.gguf`` file, or a directory holding one and no tokenizer.json / tokenizer.model,
    which would win as they do in ``load_tokenizer``): transformers builds the tokenizer from the file's metadata
    (``AutoTokenizer.from_pretrained(dir, gguf_file=...)``).

    Raises:
        ValueError: the directory has no usable tokenizer (the message names ``tokenizer_path``).
    """
    from transformers import AutoTokenizer

    from radixgen.runtime.models.checkpoint_path import find_gguf_file

    try:
        gguf_file = find_gguf_file(path)
        own_files = any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer.model"))
        if gguf_file is not None and not own_files:  # vocabulary, merges, specials and template from GGUF metadata
            return AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any loader failure is a configuration error
        raise ValueError(f"tokenizer_path: cannot load a tokenizer from {path!r}: {e}") from e


def _token_str(v: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def _special_token_id(key: str) -> property:
    """A read-only property: the vocabulary id of the tokenizer's special token ``key`` (e.g. ``"bos_token"``), or
    None when that token is unset or not in the vocabulary; it follows later assignments to the token."""

    def token_id(self: FastTokenizer) -> int | None:
        token = getattr(self, key)
        return None if token is None else self._tok.token_to_id(token)

    return property(token_id, doc=f"The id of ``{key}`` (None when unset or unknown).")


class FastTokenizer:
    """Hugging Face-compatible tokenizer over ``tokenizers.Tokenizer`` (no torch, no transformers).

    Attributes:
        chat_template: the Jinja chat template (``None`` if the tokenizer has none).
        bos_token / eos_token / unk_token / pad_token and their ``*_id``: from tokenizer_config.json.
        model_max_length: from tokenizer_config.json (a large number when absent).

    Raises:
        ValueError: unreadable tokenizer files.
    """

    def __init__(self, path: str) -> None:
        self.name_or_path = path
        try:
            self._tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exception
            raise ValueError(f"tokenizer_path: cannot read {path}/tokenizer.json: {e}") from e
        cfg: dict[str, Any] = {}
        cfg_path = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)
        for key in _SPECIAL_KEYS:
            setattr(self, key, _token_str(cfg.get(key)))
        self.clean_up_tokenization_spaces = bool(cfg.get("clean_up_tokenization_spaces", False))
        self.model_max_length = int(cfg.get("model_max_length") or 10**30)
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: use "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        jinja_path = os.path.join(path, "chat_template.jinja")
        if template is None and os.path.isfile(jinja_path):
            with open(jinja_path, encoding="utf-8") as f:
                template = f.read()
        self.chat_template: str | None = template
        added = self._tok.get_added_tokens_decoder()  # {id: AddedToken}
        self.all_special_ids: list[int] = sorted(i for i, t in added.items() if t.special)

    # ------------------------------------------------------------------ ids
    bos_token_id = _special_token_id("bos_token")
    eos_token_id = _special_token_id("eos_token")
    pad_token_id = _special_token_id("pad_token")
    unk_token_id = _special_token_id("unk_token")

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (without added tokens), like Hugging Face's ``vocab_size``."""
        return int(self._tok.get_vocab_size(with_added_tokens=False))

    def __len__(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def get_vocab(self) -> dict[str, int]:
        return dict(self._tok.get_vocab(with_added_tokens=True))

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str | None] | None:
        if isinstance(ids, int):
            return self._tok.id_to_token(ids)
        return [self._tok.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int | None] | None:
        if isinstance(tokens, str):
            return self._tok.token_to_id(tokens)
        return [self._tok.token_to_id(t) for t in tokens]

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, add_special_tokens: bool = True, **_: Any) -> list[int]:
        """Token ids of ``text`` (with the tokenizer's BOS/EOS template when ``add_special_tokens``)."""
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True, **_: Any) -> dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        return {"input_ids": self.encode_batch(text, add_special_tokens)}

    def decode(
        self,
        ids: int | Sequence[int],
        skip_special_tokens: bool = False,
        spaces_between_special_tokens: bool = True,
        clean_up_tokenization_spaces: bool | None = None,
        **_: Any,
    ) -> str:
        """Text of ``ids``. ``spaces_between_special_tokens`` is accepted and ignored, like Hugging Face fast
        tokenizers do; ``clean_up_tokenization_spaces`` defaults to the tokenizer config's value."""
        del spaces_between_special_tokens
        id_list = [ids] if isinstance(ids, int) else [int(i) for i in ids]
        text = self._tok.decode(id_list, skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces:
            for a, b in _CLEANUPS:
                text = text.replace(a, b)
        return text

    def batch_decode(self, sequences: Sequence[Sequence[int]], **kwargs: Any) -> list[str]:
        return [self.decode(s, **kwargs) for s in sequences]

    # ------------------------------------------------------------------ chat
    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = True,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> str | list[int] | dict[str, Any]:
        """Render a conversation with the Jinja chat template, as ``transformers`` does (compiled by
        ``radixgen.chat_templates.compile_chat_template``: sandboxed Jinja with trim_blocks/lstrip_blocks,
        ``raise_exception``, ``strftime_now`` and a ``tojson`` filter).

        Returns:
            the prompt string (``tokenize=False``), its token ids (no special tokens added: the template
            writes them), or ``{"input_ids": ids}`` with ``return_dict``.

        Raises:
            ValueError: the tokenizer has no chat template, or the template raised an error.
        """
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("chat_template: the tokenizer has no chat template; start the server with --chat-template")
        specials = {k: getattr(self, k) for k in _SPECIAL_KEYS}
        try:
            rendered = compile_chat_template(template).render(
                messages=conversation,
                tools=tools,
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                **specials,
                **kwargs,
            )
        except Exception as e:  # noqa: BLE001 - jinja errors of any kind are a bad template or input
            raise ValueError(f"chat_template: rendering failed: {e}") from e
        if continue_final_message and conversation:
            last = conversation[-1].get("content")
            if isinstance(last, str) and last.strip() and last.strip() in rendered:
                rendered = rendered[: rendered.rindex(last.strip()) + len(last.strip())]
        if not tokenize:
            return rendered
        ids = self.encode(rendered, add_special_tokens=False)
        return {"input_ids": ids} if return_dict else ids

