"""Tiny GGUF models for tests: random-weight llama models written with the `gguf` package.

Two layers and 64 dimensions over a vocabulary of 3 specials, the 256 byte tokens and a few words:
about half a megabyte, loaded and decoded by the real llama.cpp at thousands of tokens per second,
and deterministic at temperature 0 as a single sequence. `header_only` writes the same header with
chosen fields broken, for the GGUF header checks.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

EMBED, LAYERS, FFN, HEADS = 64, 2, 128, 4
WORDS = ("▁def", "▁return", "▁print", "▁fix", "▁bug", "▁the", "▁code", "(", ")", ":")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(WORDS)
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(WORDS)
    scores = [0.0] * 259 + [-float(i) for i in range(len(WORDS))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(
    path: str | Path,
    *,
    seed: int = 0,
    context: int = 512,
    name: str = "tiny",
    chat_template: str = CHAT_TEMPLATE,
) -> Path:
    """Write a random-weight llama GGUF to `path` (F32 weights, `context` tokens of context)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(context)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(EMBED // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(chat_template)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    vocab = len(tokens)
    writer.add_tensor("token_embd.weight", weight(vocab, EMBED))
    for layer in range(LAYERS):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(EMBED, dtype=np.float32))
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{block}.{part}.weight", weight(EMBED, EMBED))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(EMBED, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", weight(FFN, EMBED))
        writer.add_tensor(f"{block}.ffn_up.weight", weight(FFN, EMBED))
        writer.add_tensor(f"{block}.ffn_down.weight", weight(EMBED, FFN))
    writer.add_tensor("output_norm.weight", np.ones(EMBED, dtype=np.float32))
    writer.add_tensor("output.weight", weight(vocab, EMBED))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def scale_eos(path: Path, factor: float) -> Path:
    """Scale the output row of </s> in place: above 1 greedy generation ends early on EOS; at 0
    its logit is exactly 0, below the best of the other ~270 random logits at every step, so
    greedy generation never ends on EOS and runs to max_tokens."""
    reader = gguf.GGUFReader(path, "r+")
    (out,) = (t for t in reader.tensors if t.name == "output.weight")
    out.data[2, :] *= factor  # row 2 is </s>
    out.data.flush()
    del reader
    return path
