"""Tiny locally created BERT teachers, tokenizers and text for the encoder family's tests."""
from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the cat dog sat on a mat and ran to park sun was big red ball girl boy saw "
         "played with friend happy day one time upon once little tree").split()


def corpus(n: int = 120, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(n)]


def tiny_bert(layers: int = 4, hidden: int = 32, heads: int = 4, seed: int = 0, vocab: int = 64):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, max_position_embeddings=64, pad_token_id=0,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(cfg, add_pooling_layer=False)


def tiny_folder(path: Path, layers: int = 4, hidden: int = 32) -> Path:
    """A saved tiny BERT + WordPiece tokenizer over WORDS: a local 'teacher.path'."""
    from transformers import BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    import inspect

    # transformers 5 takes the vocabulary itself (`vocab`); 4.x reads `vocab_file`
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    else:
        tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    tok.save_pretrained(path)
    tiny_bert(layers, hidden, vocab=len(vocab)).save_pretrained(path)
    return path


def batch(n: int = 8, vocab: int = 64, t: int = 10, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    for i in range(n):  # ragged lengths
        mask[i, 4 + i % (t - 4):] = 0
    ids = ids * mask
    return {"input_ids": ids, "attention_mask": mask}


def tiny_xlmr_folder(path: Path, texts: list[str], layers: int = 2, hidden: int = 32, vocab: int = 90) -> Path:
    """A saved tiny XLM-RoBERTa with a byte-level BPE tokenizer of its own, trained on `texts`
    (`<s> text </s>`, pad id 1 as XLM-R's): a student whose ids are not the BERT teacher's."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    path.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                  sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    tok.save_pretrained(path)
    torch.manual_seed(1)
    cfg = XLMRobertaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                           intermediate_size=2 * hidden, max_position_embeddings=80, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    XLMRobertaModel(cfg, add_pooling_layer=False).save_pretrained(path)
    return path
