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


def test_served_token_logprobs_are_the_models_own(served):
    """token_logprobs: the log-prob at temperature 1 of each next input token, read here from the
    model's own logits (0 at each row's last real token), whatever the top-k's temperature; rows of
    two lengths answered in one request."""
    teacher, url = served
    remote = RemoteTeacher(url, timeout=30)
    ids = torch.tensor([[3, 7, 9, 11, 2], [4, 8, 15, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    _, _, tok = remote.topk(ids, mask, k=2, temperature=3.0, with_tail=True, with_tokens=True)
    with torch.no_grad():
        lp = torch.log_softmax(teacher.module(ids, attention_mask=mask).logits.float(), -1)
    for r, n in enumerate(mask.sum(1).tolist()):
        want = lp[r, torch.arange(n - 1), ids[r, 1:n]]
        assert torch.allclose(tok[r, :n - 1], want, atol=1e-5) and float(tok[r, n - 1]) == 0.0


def test_served_token_logprobs_over_the_first_vocab_rows(served):
    """With "vocab": n the next tokens' log-probs are normalised over the first n output rows only
    (a head padded past its tokenizer), read here from the model's own logits cut to n rows; the
    same request without vocab answers the full-row values, and the two are not equal."""
    teacher, url = served
    remote = RemoteTeacher(url, timeout=30)
    ids = torch.tensor([[3, 7, 9, 11, 2], [4, 8, 15, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    top, tail, cut = remote.topk(ids, mask, k=2, with_tail=True, with_tokens=True, vocab=20)
    _, _, full = remote.topk(ids, mask, k=2, with_tail=True, with_tokens=True)
    with torch.no_grad():
        logits = teacher.module(ids, attention_mask=mask).logits.float()
    lp20, lp = torch.log_softmax(logits[..., :20], -1), torch.log_softmax(logits, -1)
    for r, n in enumerate(mask.sum(1).tolist()):
        pos = torch.arange(n - 1)
        assert torch.allclose(cut[r, :n - 1], lp20[r, pos, ids[r, 1:n]], atol=1e-5)
        assert torch.allclose(full[r, :n - 1], lp[r, pos, ids[r, 1:n]], atol=1e-5)
        assert (cut[r, :n - 1] > full[r, :n - 1]).all()
    # the top-k and its tail are over the same 20 rows
    want = lp20.topk(2, -1)
    assert torch.equal(top.indices, want.indices) and torch.allclose(top.logprobs, want.values, atol=1e-5)
    assert int(top.indices.max()) < 20
    rest = lp20.scatter(-1, want.indices, float("-inf")).logsumexp(-1)
    assert torch.allclose(tail, rest, atol=1e-5)


def test_bad_requests_get_clear_errors(served):
    _, url = served
    remote = RemoteTeacher(url, timeout=30)
    with pytest.raises(DistillError, match=r"400 k must be an integer in \[1, 16\], got 99"):
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


# ---- hardening: every bad request is a clear 4xx and the server keeps serving ----------------

def _raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    import http.client
    import json
    from urllib.parse import urlparse

    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest(method, path)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if body is not None and "Content-Length" not in hdrs:
            hdrs["Content-Length"] = str(len(body))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body is not None:
            conn.send(body)
        r = conn.getresponse()
        data = r.read()
        return r.status, json.loads(data)
    finally:
        conn.close()


def _post(url, obj, **kw):
    import json

    return _raw(url, "POST", "/v1/topk", obj if isinstance(obj, bytes) else json.dumps(obj).encode(), **kw)


BAD_REQUESTS = [
    ({"input_ids": [[1, 2, 99999]]}, 400, r"input_ids\[0\]\[2\] = 99999 is not a token id .*0 <= id < 50"),
    ({"input_ids": [[1, -3]]}, 400, r"input_ids\[0\]\[1\] = -3 is not a token id"),
    ({"input_ids": [[]]}, 400, r"input_ids\[0\] is empty"),
    ({"input_ids": []}, 400, r"input_ids must be a non-empty list"),
    ({"input_ids": [1, 2]}, 400, r"input_ids\[0\] must be a list"),
    ({"input_ids": [[1.5, 2]]}, 400, r"input_ids\[0\]\[0\] is 1.5 \(float\): token ids must be integers"),
    ({"input_ids": [[True, 2]]}, 400, r"input_ids\[0\]\[0\] is True \(bool\)"),
    ({"input_ids": [[1, 2], [3]]}, 400, r"input_ids is ragged: row 0 has 2 entries, row 1 has 1"),
    ({"input_ids": [[1, 2]], "attention_mask": [[1]]}, 400, r"attention_mask is 1 x 1 but input_ids is 1 x 2"),
    ({"input_ids": [[1, 2]], "attention_mask": [[1, 2]]}, 400, r"attention_mask\[0\] holds values other than 0 and 1"),
    ({"input_ids": [[1, 2]], "attention_mask": [[0, 0]]}, 400, r"attention_mask\[0\] is all 0"),
    ({"input_ids": [[1, 2]], "k": 0}, 400, r"k must be an integer in \[1, 16\], got 0"),
    ({"input_ids": [[1, 2]], "k": "4"}, 400, r"k must be an integer"),
    ({"input_ids": [[1, 2]], "k": True}, 400, r"k must be an integer"),
    ({"input_ids": [[1, 2]], "temperature": 0}, 400, r"temperature must be a finite number > 0, got 0"),
    ({"input_ids": [[1, 2]], "temperature": "hot"}, 400, r"temperature must be a finite number"),
    (b'{"input_ids": [[1, 2]], "temperature": NaN}', 400, r"temperature must be a finite number > 0, got nan"),
    ({"input_ids": [[1, 2]], "top_k": 3}, 400, r"unknown field\(s\) \['top_k'\]"),
    ({"input_ids": [[1, 2]], "token_logprobs": "yes"}, 400, r"token_logprobs must be true or false, got 'yes'"),
    ({"input_ids": [[1, 2]], "vocab": 10, "k": 12}, 400, r"k \(12\) is more than vocab \(10\)"),
    ({"input_ids": [[1, 2]], "token_logprobs": True, "vocab": 0}, 400, r"vocab must be an integer in \[1, 50\]"),
    ({"input_ids": [[1, 2]], "token_logprobs": True, "vocab": 51}, 400, r"vocab must be an integer in \[1, 50\]"),
    ({"input_ids": [[1, 2]], "token_logprobs": True, "vocab": 2.5}, 400, r"vocab must be an integer"),
    ({"input_ids": [[1, 12]], "token_logprobs": True, "vocab": 10, "k": 2}, 400, r"input_ids\[0\]\[1\] = 12 is outside vocab \(10\)"),
    ({"ids": [[1, 2]]}, 400, r"unknown field"),
    ({}, 400, r"input_ids is missing"),
    ([[1, 2]], 400, r"the body must be a JSON object"),
    (b"input_ids=1,2", 400, r"the body is not JSON"),
    (b"\xff\xfe", 400, r"the body is not JSON"),
    ({"input_ids": [list(range(40))]}, 400, r"40 tokens, more than the served model's 32 positions"),
    ({"input_ids": [[1] * 30] * 10}, 413, r"10 x 30 = 300 tokens, more than this server's limit of 256"),
]


@pytest.fixture
def hard_served():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2))
    teacher = Teacher(model)
    server = make_server(teacher, "127.0.0.1", 0, max_k=16, max_tokens=256, batch_wait_ms=5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield teacher, server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("body,status,message", BAD_REQUESTS)
def test_malformed_requests_are_4xx_naming_the_problem(hard_served, body, status, message):
    import re

    _, _, url = hard_served
    code, reply = _post(url, body)
    assert code == status and re.search(message, reply["error"]), (code, reply)
    code, reply = _post(url, {"input_ids": [[1, 2, 3]], "k": 2})  # and the server still answers
    assert code == 200 and len(reply["indices"][0]) == 3


def test_transport_errors_and_internal_failures(hard_served):
    teacher, server, url = hard_served
    code, reply = _raw(url, "POST", "/v1/topk", b"", headers={"Content-Length": "0"})
    assert code == 400 and "body is empty" in reply["error"]
    code, reply = _raw(url, "POST", "/v1/topk", b"{}", headers={"Content-Length": str(200 * 1024 * 1024)})
    assert code == 413 and "more than the limit" in reply["error"]
    assert _raw(url, "POST", "/v1/other", b"{}")[0] == 404
    assert _raw(url, "GET", "/v2/info")[0] == 404
    calls = []

    def broken(*a, **k):
        calls.append(1)
        raise RuntimeError("device lost")

    server.batcher.teacher = broken
    code, reply = _post(url, {"input_ids": [[1, 2]]})
    assert code == 500 and "RuntimeError: device lost" in reply["error"] and calls
    server.batcher.teacher = teacher
    assert _post(url, {"input_ids": [[1, 2]]})[0] == 200


def test_bearer_token(monkeypatch):
    from torch import nn
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(DistillError, match="needs a bearer token"):
        make_server(Teacher(nn.Linear(2, 2)), "0.0.0.0", 0, allow_remote=True)
    with pytest.raises(DistillError, match="at least 16 characters"):
        make_server(Teacher(nn.Linear(2, 2)), "127.0.0.1", 0, token="short")
    secret = "s3cret-token-of-some-length"
    model = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    server = make_server(Teacher(model), "127.0.0.1", 0, max_k=4, token=secret)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        monkeypatch.delenv("DISTILL_SERVE_TOKEN", raising=False)
        with pytest.raises(DistillError, match="401 this server needs a bearer token"):
            RemoteTeacher(url, timeout=30)
        with pytest.raises(DistillError, match="401"):
            RemoteTeacher(url, timeout=30, token=secret + "x")
        code, _ = _post(url, {"input_ids": [[1, 2]]}, headers={"Authorization": "Bearer nope"})
        assert code == 401
        ok = RemoteTeacher(url, timeout=30, token=secret)
        assert ok.topk(torch.tensor([[1, 2, 3]]), k=4).indices.shape == (1, 3, 4)
        monkeypatch.setenv("DISTILL_SERVE_TOKEN", secret)  # what a recipe's run uses: no secret in the recipe
        assert RemoteTeacher(url, timeout=30).fingerprint() == ok.fingerprint()
    finally:
        server.shutdown()
        server.server_close()


def test_batched_forward_equals_each_request_alone(hard_served):
    """Requests of different lengths, masks and row counts run as one right-padded forward, and
    each gets the same top-k as when it runs alone."""
    from distill.serve import _Job

    teacher, server, _ = hard_served
    g = torch.Generator().manual_seed(3)
    jobs = []
    for rows, t in [(1, 5), (2, 11), (1, 3), (3, 8)]:
        ids = torch.randint(0, 50, (rows, t), generator=g)
        mask = None
        if rows == 2:
            mask = torch.ones(rows, t, dtype=torch.long)
            mask[1, :4] = 0  # a left-padded row in the client's own request
            mask = mask.tolist()
        jobs.append(_Job(ids.tolist(), mask, 6, 1.5))
    server.batcher._run(jobs, 11)
    for j in jobs:
        assert j.error is None
        m = torch.tensor(j.mask) if j.mask is not None else None
        alone, tail = topk_logprobs(teacher, torch.tensor(j.ids), m, 6, 1.5, with_tail=True)
        got_i, got_lp, got_tail = (torch.tensor(x) for x in j.result)
        assert got_i.shape == (len(j.ids), len(j.ids[0]), 6)
        assert torch.equal(got_i, alone.indices)
        torch.testing.assert_close(got_lp, alone.logprobs, rtol=0, atol=1e-5)
        torch.testing.assert_close(got_tail, tail, rtol=0, atol=1e-5)


def test_sixteen_concurrent_clients_get_their_own_replies(hard_served):
    """16 clients, 4 requests each, mixed lengths, k and temperatures: no reply lost, duplicated
    or mixed up, each equal (within float rounding of the batched forward) to a single-client run."""
    from concurrent.futures import ThreadPoolExecutor

    teacher, server, url = hard_served

    def client(c):
        remote = RemoteTeacher(url, timeout=60)
        g = torch.Generator().manual_seed(100 + c)
        out = []
        for r in range(4):
            ids = torch.randint(0, 50, (1 + (c + r) % 2, 3 + (5 * c + r) % 17), generator=g)
            k, temp = (4, 1.0) if c % 3 else (8, 2.0)
            got, tail = remote.topk(ids, k=k, temperature=temp, with_tail=True)
            out.append((ids, k, temp, got, tail))
        return out

    before = server.batcher.forwards
    with ThreadPoolExecutor(16) as pool:
        results = [r for rs in pool.map(client, range(16)) for r in rs]
    assert len(results) == 64
    for ids, k, temp, got, tail in results:
        alone, alone_tail = topk_logprobs(teacher, ids, None, k, temp, with_tail=True)
        assert torch.equal(got.indices, alone.indices)
        torch.testing.assert_close(got.logprobs, alone.logprobs, rtol=0, atol=1e-5)
        torch.testing.assert_close(tail, alone_tail, rtol=0, atol=1e-5)
    assert 1 <= server.batcher.forwards - before <= 64
