"""What a scratch run is made of: the corpus' documents (checked), the tokenizer (trained, reused or the interrupted
run's), the model (fresh from the config, or ``init_from``), its token rows and its AdamW."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from attrilens.errors import AttrilensError
from attrilens.workflows.trainer.config import TrainConfig

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: list[str], vocab_size: int, out: Path, seq_len: int = 512):
    """Train a byte-level BPE tokenizer and save it as a transformers fast tokenizer in ``out``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD],
                            show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS,
                                  unk_token=EOS, pad_token=PAD, model_max_length=seq_len)
    tok.save_pretrained(out)
    return tok


def load_tokenizer(path: Path):
    """A tokenizer directory (one `train` wrote, or any transformers tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def build_model(config: TrainConfig, tok):
    """A freshly initialised GPT-2 or Llama model sized by ``config`` for tokenizer ``tok``."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(config.seed)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    vocab = len(tok)
    if config.arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_positions=config.seq_len, n_embd=config.width, n_layer=config.layers,
                         n_head=config.heads, n_inner=config.intermediate, resid_pdrop=0.0, embd_pdrop=0.0,
                         attn_pdrop=0.0, tie_word_embeddings=True, **ids)
    else:
        inter = config.intermediate or int(math.ceil(config.width * 8 / 3 / 32) * 32)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=config.width, intermediate_size=inter,
                          num_hidden_layers=config.layers, num_attention_heads=config.heads,
                          num_key_value_heads=config.heads, max_position_embeddings=config.seq_len,
                          tie_word_embeddings=True, attention_dropout=0.0, **ids)
    return AutoModelForCausalLM.from_config(cfg)


def named_params(model) -> dict[str, torch.nn.Parameter]:
    """The model's trainable parameters by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def make_optimizer(config: TrainConfig, params: dict[str, torch.nn.Parameter]) -> torch.optim.AdamW:
    """AdamW over ``params``: weight decay on the matrices, none on the vectors (norms, biases)."""
    decay = [p for n, p in params.items() if p.ndim >= 2]
    no_decay = [p for n, p in params.items() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, foreach=False)


def token_rows(tok, texts: list[str], seq_len: int) -> tuple[list[list[int]], int]:
    """Each document's tokens with eos appended, cut to ``seq_len``; and how many were cut."""
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    docs = [(e + [tok.eos_token_id])[:seq_len] for e in enc]
    return docs, sum(len(e) + 1 > seq_len for e in enc)


def load_corpus(config: TrainConfig) -> tuple[list[str], list[str]]:
    """Document ids and texts of the corpus (any format `attrilens.corpus_formats` reads, its fields named by
    text_field / id_field; ids default to the 0-based position); a missing or blank text is an error."""
    from attrilens.corpus_formats import iter_row_batches

    fields = {"text_field": config.text_field, "id_field": config.id_field}
    rows = [(where, row) for batch in iter_row_batches(Path(config.corpus), **fields) for where, _, row in batch]
    if not rows:
        raise AttrilensError(f"{config.corpus} is empty. Give it at least one document.")
    for where, r in rows:
        if not isinstance(r["text"], str):
            raise AttrilensError(f'{where} has a "{config.text_field}" that is not a string. Make it a string.')
        if not r["text"].strip():
            raise AttrilensError(f'Document {r.get("id")!r} in {config.corpus} has an empty "{config.text_field}". '
                                 "Remove it or give it text.")
    return [str(r.get("id", i)) for i, (_, r) in enumerate(rows)], [r["text"] for _, r in rows]


def tokenizer_for(config: TrainConfig, out: Path, texts: list[str]):
    """The run's tokenizer: the given one (copied into ``out``), the interrupted run's, or a freshly trained one."""
    if config.tokenizer is not None:
        tok = load_tokenizer(Path(config.tokenizer))
        if Path(config.tokenizer).resolve() != out.resolve():
            tok.save_pretrained(out)
    elif (out / "tokenizer.json").is_file() and (out / "resume.safetensors").is_file():
        tok = load_tokenizer(out)  # resuming: keep the tokenizer the interrupted run trained
    else:
        tok = train_tokenizer(texts, config.vocab_size, out, config.seq_len)
    if tok.eos_token_id is None or tok.pad_token_id is None:
        raise AttrilensError(f"Tokenizer {config.tokenizer} has no eos or pad token. Use one written by `train`.")
    return tok


def model_for(config: TrainConfig, tok):
    """A fresh model, or the ``init_from`` one (its vocabulary must be the tokenizer's)."""
    if config.init_from is None:
        return build_model(config, tok)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(config.init_from), dtype=torch.float32)
    if model.config.vocab_size != len(tok):
        raise AttrilensError(f"init_from model has vocab {model.config.vocab_size}, tokenizer {len(tok)}. "
                             "Pass the tokenizer the model was trained with.")
    return model

