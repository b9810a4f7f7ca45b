"""Train a new tokenizer on a corpus with Hugging Face `tokenizers`, as a `transformers` tokenizer.

Three kinds, each with the special tokens <unk> (id 0), <pad> (1) and <eos> (2):

- "word": a word-level vocabulary. The pre-tokenizer cuts text into words (letters, digits
  and `_`, with inner apostrophes kept: "capp'd", "o'er"), single punctuation marks, single
  newlines, and runs of spaces/tabs, so whitespace is a token of its own and verse line
  breaks are kept. Decoding concatenates the tokens, so decode(encode(text)) == text exactly
  when every piece is in the vocabulary; a piece that is not comes back as "<unk>".
- "char": one token per character (newline included); decoding concatenates. Exact for
  characters in the vocabulary; the rarest characters fall out when vocab_size is small.
- "bpe": byte-level BPE (GPT-2's scheme, Sennrich et al. 2016 / Radford et al. 2019): every
  byte has a token, so every text round-trips exactly and nothing is ever <unk>.

Encoding adds no special tokens; the caller inserts <eos> between documents. bos_token is
<eos> (one end-of-text token serves both), pad_token is the distinct <pad>.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from rlhflab.errors import RlhfLabError

KINDS = ("word", "char", "bpe")
UNK, PAD, EOS = "<unk>", "<pad>", "<eos>"
SPECIAL_TOKENS = [UNK, PAD, EOS]
# A newline alone, a run of other whitespace, a word (inner apostrophes kept), or one other symbol.
WORD_PATTERN = r"\n|[^\S\n]+|\w+(?:['’]\w+)*|[^\w\s]"
CHAR_PATTERN = r"[\s\S]"  # any one character, newline included
BYTES = 256  # byte-level BPE starts from all 256 byte tokens


def minimum_vocab_size(kind: str) -> int:
    """The smallest vocab_size that `train_tokenizer` accepts for `kind`."""
    return len(SPECIAL_TOKENS) + (BYTES if kind == "bpe" else 1)


def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int, *, min_frequency: int = 1):
    """Train a `kind` tokenizer ("word", "char" or "bpe") with at most `vocab_size` tokens
    (special tokens included) on `texts`; returns a `transformers.PreTrainedTokenizerFast`.

    Pieces seen fewer than `min_frequency` times are left out of the vocabulary (they encode
    as <unk>, or as bytes for bpe). Saved with `save_pretrained`, it reloads with
    `AutoTokenizer.from_pretrained`. Raises RlhfLabError for an unknown kind, a vocab_size
    below `minimum_vocab_size(kind)`, or texts without any text.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in KINDS:
        raise RlhfLabError(f"pretrain.tokenizer must be one of {', '.join(KINDS)}, got {kind!r}.")
    smallest = minimum_vocab_size(kind)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
        need = f"{len(SPECIAL_TOKENS)} special tokens ({', '.join(SPECIAL_TOKENS)}) plus " + (
            f"{BYTES} byte tokens" if kind == "bpe" else "at least one token"
        )
        raise RlhfLabError(
            f"pretrain.vocab_size must be a whole number of at least {smallest} for a {kind} tokenizer "
            f"({need}), got {vocab_size!r}. Raise pretrain.vocab_size."
        )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise RlhfLabError(f"min_frequency must be a whole number >= 1, got {min_frequency!r}.")
    if isinstance(texts, str):
        texts = [texts]  # one text, not an iterable of characters

    options = dict(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                   show_progress=False)
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=None))  # byte fallback: nothing is unknown
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **options)
    else:
        pattern = WORD_PATTERN if kind == "word" else CHAR_PATTERN
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        tokenizer.decoder = decoders.Fuse()  # pieces carry their own whitespace: join as they are
        trainer = trainers.WordLevelTrainer(**options)

    seen = [0]
    tokenizer.train_from_iterator(_chunks(texts, seen), trainer=trainer)
    if not seen[0]:
        raise RlhfLabError("The tokenizer got no text to train on. Check the corpus (pretrain.corpus).")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=EOS,
        clean_up_tokenization_spaces=False,  # "a ." must not come back as "a."
    )


def _chunks(texts: Iterable[str], seen: list[int], lines: int = 512) -> Iterator[str]:
    """Texts cut into pieces of `lines` lines (newlines kept), so a long corpus is not one
    huge string; `seen[0]` counts the characters."""
    for text in texts:
        if not isinstance(text, str):
            raise RlhfLabError(f"train_tokenizer needs strings, got a {type(text).__name__}.")
        if not text:
            continue
        seen[0] += len(text)
        parts = text.split("\n")
        for start in range(0, len(parts), lines):
            block = parts[start : start + lines]
            last = start + lines >= len(parts)
            yield "\n".join(block) + ("" if last else "\n")
