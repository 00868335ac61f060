"""Train the tiny models' byte-level BPE tokenizer from the committed prompt text (run once, commit).

Usage: ``.venv/bin/python -m common.models.train_tokenizer`` writes
``common/models/assets/tiny_tokenizer.json``. The committed file is what the tiny models load;
retraining changes the tiny fingerprint, so only do it on purpose.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parents[2]
PROMPT_FILES = (ROOT / "bench/prompts/code.jsonl", ROOT / "bench/prompts/english.jsonl")
ASSETS = Path(__file__).resolve().parent / "assets"
# Order fixes the ids: 0 = end of text (EOS), 1/2 = chat turn markers, like Qwen's template.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
VOCAB_SIZE = 2000


def iter_texts(files: tuple[Path, ...] = PROMPT_FILES) -> Iterator[str]:
    """Yield the text field of every prompt line."""
    for path in files:
        with path.open(encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]


def train(vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE over the prompts; the 256 byte symbols keep every string encodable."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_texts(), trainer=trainer)
    return tok


def main() -> None:
    """Train and write the tokenizer JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    parser.add_argument("--out", type=Path, default=ASSETS / "tiny_tokenizer.json")
    args = parser.parse_args()
    tok = train(args.vocab_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out))
    print(f"wrote {args.out} (vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main()
