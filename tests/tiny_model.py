"""A tiny sentence-transformers model built locally (no download) for tests where model quality
is not the point: a 2-layer, 32-wide BERT with all-MiniLM-L6-v2's tokenizer, seeded weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def build_tiny_model(target: Path, seed: int = 0) -> Path:
    from opslib.infra.offline import use_offline_environment

    use_offline_environment()  # before transformers is first imported: it reads the flags then
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    from opslib.ops.bootstrap import packaged_model_path

    source = packaged_model_path()
    bert_dir = target.parent / (target.name + "-bert")
    bert_dir.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, bert_dir / name)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(bert_dir)
    transformer = models.Transformer(str(bert_dir), max_seq_length=128)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    model.save(str(target))
    shutil.rmtree(bert_dir)
    return target


def build_blind_model(source: Path, target: Path) -> Path:
    """A copy of ``source`` that reads no text: ``max_seq_length`` 2 truncates every text to the
    same two tokens, ``[CLS] [SEP]``, so all embed alike and evaluation ranks chunks in its tie order
    (chunk id). The weights are ``source``'s, and a candidate trained from it reads text again
    (it reads as far as it was trained to, at least): as a base it makes the candidate PASS."""
    shutil.copytree(source, target)
    config = target / "sentence_bert_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_seq_length": 2}))
    return target


# A character-level WordPiece vocabulary: every ASCII letter, digit and common punctuation as a
# word start and as a continuation (``##x``) — nothing like all-MiniLM-L6-v2's 30,522 entries.
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"()[]{}<>-_/=+*#%&@$"


def build_char_model(target: Path, seed: int = 0, hidden: int = 48) -> Path:
    """A second tiny sentence-transformers model unlike ``build_tiny_model``'s: its own
    character-level WordPiece tokenizer (built here, no download) and ``hidden`` dimensions
    (default 48, not 32) — the shape of an operator's delivered model."""
    from opslib.infra.offline import use_offline_environment

    use_offline_environment()
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    bert_dir = target.parent / (target.name + "-bert")
    bert_dir.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_CHARS, *(f"##{c}" for c in _CHARS)]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer.tokenize("ab") == ["a", "##b"]  # the character vocabulary took
    tokenizer.save_pretrained(bert_dir)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(bert_dir)
    transformer = models.Transformer(str(bert_dir), max_seq_length=256)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    model.save(str(target))
    shutil.rmtree(bert_dir)
    return target
