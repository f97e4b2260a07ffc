"""The served teacher returns exactly the in-process teacher's top-k, so losses are identical."""
import threading

import pytest
import torch

pytest.importorskip("transformers")

from distill.errors import DistillError  # noqa: E402
from distill.losses import sparse_divergence  # noqa: E402
from distill.serve import RemoteTeacher, make_server, topk_logprobs  # noqa: E402
from distill.teacher import Teacher  # noqa: E402


@pytest.fixture
def served():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=1))
    teacher = Teacher(model)
    server = make_server(teacher, "127.0.0.1", 0, max_k=16)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield teacher, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_served_topk_and_loss_equal_in_process(served):
    teacher, url = served
    remote = RemoteTeacher(url, timeout=30)
    assert remote.fingerprint() == teacher.fingerprint() and remote.info["vocab_size"] == 50
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    local = topk_logprobs(teacher, ids, mask, k=8, temperature=2.0)
    got = remote.topk(ids, mask, k=8, temperature=2.0)
    assert torch.equal(local.indices, got.indices) and torch.equal(local.logprobs, got.logprobs)
    student_logits = torch.randn(2, 9, 50, generator=g)
    m = mask.bool()
    a = sparse_divergence(student_logits, local.indices, local.logprobs, temperature=2.0, mask=m)
    b = sparse_divergence(student_logits, got.indices, got.logprobs, temperature=2.0, mask=m)
    assert torch.equal(a, b) and a > 0


def test_bad_requests_get_clear_errors(served):
    _, url = served
    remote = RemoteTeacher(url, timeout=30)
    with pytest.raises(DistillError, match=r"k must be in \[1, 16\]"):
        remote.topk(torch.zeros(1, 3, dtype=torch.long), k=99)


def test_refuses_non_loopback_bind_and_unreachable_server():
    from torch import nn

    with pytest.raises(DistillError, match="not a loopback address"):
        make_server(Teacher(nn.Linear(2, 2)), "0.0.0.0", 0)
    with pytest.raises(DistillError, match="not reachable"):
        RemoteTeacher("http://127.0.0.1:9", timeout=2)


def test_tokenizer_endpoint_serves_data_files_only(tmp_path):
    import base64
    import hashlib

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", "the", "cat", "sat"])}
    t = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "teacher"
    PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    (folder / "tokenization_evil.py").write_text("raise SystemExit")  # code is never served
    (folder / "extra.pkl").write_bytes(b"\x80\x04N.")                  # nor pickles
    model = GPT2LMHeadModel(GPT2Config(vocab_size=7, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    model.save_pretrained(folder)
    from distill.families.llm.models import load_causal_lm

    teacher = Teacher(load_causal_lm(str(folder)))  # served from its folder: the tokenizer is found there
    server = make_server(teacher, "127.0.0.1", 0, max_k=4)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = RemoteTeacher(f"http://127.0.0.1:{server.server_address[1]}", timeout=30)
        assert remote.info["tokenizer"] == "folder"
        kind, files = remote.tokenizer_files()
        assert kind == "folder" and "tokenizer.json" in files and "config.json" in files
        assert not any(n.endswith((".py", ".pkl", ".safetensors")) for n in files)
        assert files["tokenizer.json"] == (folder / "tokenizer.json").read_bytes()

        # the client accepts only known tokenizer file names with a matching checksum
        def fake(name, body=b"{}", digest=None):
            d = hashlib.sha256(name.encode() + b"\0" + hashlib.sha256(body).digest()).hexdigest()
            return lambda *a, **k: {"fingerprint": remote.fingerprint(), "kind": "folder",
                                    "files": {name: base64.b64encode(body).decode()}, "sha256": digest or d}

        remote._call = fake("../tokenization_evil.py")
        with pytest.raises(DistillError, match="unexpected tokenizer files"):
            remote.tokenizer_files()
        remote._call = fake("tokenizer.json", digest="0" * 64)
        with pytest.raises(DistillError, match="checksum"):
            remote.tokenizer_files()
    finally:
        server.shutdown()
        server.server_close()


def test_no_tokenizer_and_another_model_are_refused(served):
    _, url = served
    remote = RemoteTeacher(url, timeout=30)
    assert remote.info["tokenizer"] is None  # a model built in memory: no tokenizer folder
    with pytest.raises(DistillError, match="no tokenizer"):
        remote.tokenizer_files()
    remote.info["fingerprint"] = "another-model"  # as if the server had been restarted with other weights
    with pytest.raises(DistillError, match="now serves another model"):
        remote.topk(torch.zeros(1, 3, dtype=torch.long), k=2)
