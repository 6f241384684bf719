"""llama.cpp's server (llama-cpp-python's `llama_cpp.server`) on a tiny random-weight llama
model that the `gguf` package writes here: nothing is downloaded. The answers are gibberish,
but the inference is real (prompt processing, sampling, seeds, stop strings, logprobs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import openai
import requests

from tests.support.hub import free_port, wait_until

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
HEADS, CONTEXT = 4, 512
MERGES = ("Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r")
SPECIAL_IDS = [256 + len(MERGES) + i for i in range(len(SPECIAL))]
EOS = SPECIAL_IDS[SPECIAL.index("<|im_end|>")]
# llama.cpp ends a generation at any of them: banning all with `logit_bias` makes a stream
# last exactly max_tokens.
NO_END = {str(token): -100 for token in SPECIAL_IDS}


def _byte_tokens() -> list[str]:
    """GPT-2's byte-level alphabet: each of the 256 bytes as a printable character."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_model(path: Path, embed: int = 64, layers: int = 2, seed: int = 7) -> Path:
    """A llama architecture GGUF (`layers` blocks, `embed` wide: the defaults make about
    1,500 tokens/s on one thread; wider is slower), a GPT-2 byte-level BPE vocabulary of
    the 256 bytes, a few merges and ChatML's special tokens, a ChatML chat template."""
    ffn = 2 * embed
    import gguf

    byte_tokens = _byte_tokens()
    merges = list(MERGES)
    merged = [a + b for a, b in (m.split(" ") for m in merges)]
    tokens = [*byte_tokens, *merged, *SPECIAL]
    types = [1] * (len(tokens) - len(SPECIAL)) + [3] * len(SPECIAL)  # normal, control
    vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tether-tiny-random")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(embed)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(embed // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    assert tokens.index("<|im_end|>") == EOS
    writer.add_eos_token_id(EOS)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int, ones: bool = False) -> None:
        data = np.ones(shape, np.float32) if ones else \
            rng.normal(0, 0.5, shape).astype(np.float32)
        writer.add_tensor(name, data)

    tensor("token_embd.weight", vocab, embed)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", embed, ones=True)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{name}.weight", embed, embed)
        tensor(f"blk.{i}.ffn_norm.weight", embed, ones=True)
        tensor(f"blk.{i}.ffn_gate.weight", ffn, embed)
        tensor(f"blk.{i}.ffn_up.weight", ffn, embed)
        tensor(f"blk.{i}.ffn_down.weight", embed, ffn)
    tensor("output_norm.weight", embed, ones=True)
    tensor("output.weight", vocab, embed)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def server_command(model: Path, port: int, *extra: str) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server, in the foreground."""
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
            "127.0.0.1", "--port", str(port), "--n_ctx", str(CONTEXT), "--n_threads", "1",
            "--seed", "1", *extra]


class LlamaServer:
    """One `llama_cpp.server` process of the test's own, its output in a file."""

    def __init__(self, model: Path, log: Path, port: int | None = None, *extra: str) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.command = server_command(model, self.port, *extra)
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> LlamaServer:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        wait_until(self.up, timeout=timeout, interval=0.1)
        return self

    def up(self) -> bool:
        try:
            return requests.get(f"{self.base_url}/models", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def sdk(hub_or_url: object) -> openai.OpenAI:
    """The official client, without its retries (a retried 5xx would hide what happened)."""
    url = hub_or_url if isinstance(hub_or_url, str) else f"{hub_or_url.url}/v1"
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
