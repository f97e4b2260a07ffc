"""A served teacher: top-k log-probabilities by token id over HTTP, so that students on other
machines or processes need not load the teacher.

    distill serve-teacher runs/cache/teacher_hf --port 8765          # binds 127.0.0.1 by default

POST /v1/topk  {"input_ids": [[...]], "attention_mask": [[...]] (optional), "k": 32, "temperature": 1.0}
  -> {"indices": [[[...]]] (B, T, k), "logprobs": [[[...]]] (B, T, k), "fingerprint": "...", "vocab_size": V}
  (plus "log_tail": (B, T), the exact log of the probability mass outside the top-k)
GET  /v1/info  -> {"fingerprint", "vocab_size", "max_k", "tokenizer"}
GET  /v1/tokenizer -> {"fingerprint", "kind", "files": {name: base64 bytes}}
  the teacher's tokenizer as data: the tokenizer files of a folder ("kind": "folder"; only the
  known data files: tokenizer.json, vocab/merges, SentencePiece models, JSON configs; never code or
  pickles), or one SentencePiece model ("kind": "sentencepiece", served as tokenizer.model)

Log-probs are normalised over the full vocabulary at the given temperature (float32; JSON floats
round-trip exactly), so `losses.sparse_divergence` gives the same value as with the in-process
teacher's top-k. Requests and responses are plain JSON: nothing received is ever unpickled.
Every reply carries the served model's weights fingerprint; a client refuses a reply whose
fingerprint differs from the one it saw when it connected (the server now serves another model).
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.teacher import CachedOutputs, Teacher

MAX_BODY = 64 * 1024 * 1024
MAX_TOKENIZER_BYTES = 256 * 1024 * 1024

# The files of a tokenizer folder that are served (data only: JSON, text and SentencePiece protobufs).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json", "config.json")
# at least one of these must be present for a folder to hold a tokenizer
_TOKENIZER_CORE = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                   "vocab.txt")


def tokenizer_payload(source: str | Path | None) -> dict[str, Any] | None:
    """{"kind", "files": {name: bytes}} of a tokenizer folder or a SentencePiece `.model` file;
    None when `source` is None or holds no tokenizer."""
    if source is None:
        return None
    p = Path(source)
    if p.is_file():
        if p.suffix != ".model":
            raise DistillError(f"serve-teacher: tokenizer {str(p)!r} is a file but not a SentencePiece .model; "
                               "give a tokenizer folder or a .model file.")
        return {"kind": "sentencepiece", "files": {"tokenizer.model": p.read_bytes()}}
    if not p.is_dir() or not any((p / n).is_file() for n in _TOKENIZER_CORE):
        return None
    files = {n: (p / n).read_bytes() for n in TOKENIZER_FILES if (p / n).is_file()}
    if sum(len(b) for b in files.values()) > MAX_TOKENIZER_BYTES:
        raise DistillError(f"serve-teacher: the tokenizer files in {str(p)!r} exceed {MAX_TOKENIZER_BYTES} bytes.")
    return {"kind": "folder", "files": files}


@torch.no_grad()
def topk_logprobs(teacher: Teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, k: int,
                  temperature: float = 1.0, with_tail: bool = False):
    """Top-k (indices, log-probs) of a causal LM at every position. (B, T) -> (B, T, k) each;
    with `with_tail`, also the exact log of the remaining mass (B, T), floored at -1e4."""
    out = teacher(input_ids=input_ids, attention_mask=attention_mask)
    logits = out.logits if hasattr(out, "logits") else out
    lp = F.log_softmax(logits.float() / temperature, dim=-1)
    top = lp.topk(min(k, lp.shape[-1]), dim=-1)
    result = CachedOutputs(top.indices, top.values)
    if not with_tail:
        return result
    rest = lp.scatter(-1, top.indices, float("-inf")).logsumexp(-1).clamp(min=-1.0e4)
    return result, rest


def _handler(teacher: Teacher, max_k: int, device: torch.device | str, lock: threading.Lock,
             tokenizer: dict[str, Any] | None = None):
    info = {"fingerprint": teacher.fingerprint(), "max_k": max_k,
            "vocab_size": int(getattr(getattr(teacher.module, "config", None), "vocab_size", 0) or 0),
            "tokenizer": tokenizer["kind"] if tokenizer else None}
    tok_reply = None
    if tokenizer:
        files = {n: base64.b64encode(b).decode("ascii") for n, b in sorted(tokenizer["files"].items())}
        digest = hashlib.sha256()
        for n, b in sorted(tokenizer["files"].items()):
            digest.update(n.encode() + b"\0" + hashlib.sha256(b).digest())
        tok_reply = json.dumps({"fingerprint": info["fingerprint"], "kind": tokenizer["kind"], "files": files,
                                "sha256": digest.hexdigest()}).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet by default
            pass

        def _send(self, code: int, body: dict | bytes) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v1/info":
                self._send(200, info)
            elif self.path == "/v1/tokenizer":
                if tok_reply is None:
                    self._send(404, {"error": "this server has no tokenizer to give (the served model's folder holds "
                                              "no tokenizer files); load one locally (teacher.path or teacher.tokenizer)"})
                else:
                    self._send(200, tok_reply)
            else:
                self._send(404, {"error": f"unknown path {self.path}; use GET /v1/info, GET /v1/tokenizer or "
                                          "POST /v1/topk"})

        def do_POST(self):
            if self.path != "/v1/topk":
                return self._send(404, {"error": f"unknown path {self.path}; use POST /v1/topk"})
            try:
                n = int(self.headers.get("Content-Length", "0"))
                if n <= 0 or n > MAX_BODY:
                    raise ValueError(f"body of {n} bytes (limit {MAX_BODY})")
                req = json.loads(self.rfile.read(n))
                ids = torch.tensor(req["input_ids"], dtype=torch.long, device=device)
                if ids.dim() != 2:
                    raise ValueError("input_ids must be a list of equal-length lists of token ids")
                mask = req.get("attention_mask")
                mask = torch.tensor(mask, dtype=torch.long, device=device) if mask is not None else None
                k = int(req.get("k", max_k))
                if not 1 <= k <= max_k:
                    raise ValueError(f"k must be in [1, {max_k}], got {k}")
                temperature = float(req.get("temperature", 1.0))
                if temperature <= 0:
                    raise ValueError("temperature must be > 0")
            except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
                return self._send(400, {"error": str(e)})
            with lock:  # one forward at a time on the device
                out, tail = topk_logprobs(teacher, ids, mask, k, temperature, with_tail=True)
            self._send(200, {"indices": out.indices.cpu().tolist(), "logprobs": out.logprobs.cpu().tolist(),
                             "log_tail": tail.cpu().tolist(), **info})

    return Handler


def make_server(teacher: Teacher, host: str = "127.0.0.1", port: int = 8765, max_k: int = 64,
                device: str | torch.device = "cpu", allow_remote: bool = False,
                tokenizer: str | Path | None = None) -> ThreadingHTTPServer:
    """An HTTP server for `teacher` (call `.serve_forever()`; `.server_address` has the port).

    `tokenizer` (a tokenizer folder or a SentencePiece `.model` file) is offered at GET /v1/tokenizer;
    by default, the folder the teacher was loaded from (its config's `name_or_path`), if that folder
    holds tokenizer files."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allow_remote:
        raise DistillError(f"serve-teacher: refusing to bind {host!r}, which is not a loopback address; "
                           "pass --allow-remote to expose the teacher beyond this machine.")
    if tokenizer is None:
        origin = getattr(getattr(teacher.module, "config", None), "_name_or_path", None)
        tokenizer = origin if origin and Path(origin).is_dir() else None
    payload = tokenizer_payload(tokenizer)
    teacher.to(device)
    return ThreadingHTTPServer((host, port), _handler(teacher, max_k, device, threading.Lock(), payload))


class RemoteTeacher:
    """Client of a served teacher: `topk(input_ids, attention_mask, k)` -> CachedOutputs on `device`;
    `tokenizer_files()` -> (kind, {name: bytes}). Replies from a model other than the one seen at
    connection (another fingerprint) are refused."""

    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.info = self._call("GET", "/v1/info")

    def _call(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise DistillError(f"served teacher at {self.url}: {e.code} {json.loads(e.read()).get('error', '')}") from None
        except OSError as e:
            raise DistillError(f"served teacher at {self.url} is not reachable ({e}); start it with "
                               "`distill serve-teacher MODEL_DIR`.") from None

    def fingerprint(self) -> str:
        return self.info["fingerprint"]

    def _check_same_model(self, reply: dict[str, Any]) -> None:
        if reply.get("fingerprint") != self.fingerprint():
            raise DistillError(f"served teacher at {self.url} now serves another model (fingerprint "
                               f"{reply.get('fingerprint')}, not {self.fingerprint()} as when this run connected); "
                               "restart the run against one served model.")

    def tokenizer_files(self) -> tuple[str, dict[str, bytes]]:
        """(kind, {file name: bytes}) of the served tokenizer: kind "folder" (tokenizer files) or
        "sentencepiece" (tokenizer.model). Only the known tokenizer data files are accepted."""
        out = self._call("GET", "/v1/tokenizer")
        self._check_same_model(out)
        kind, files = out.get("kind"), out.get("files")
        if kind not in ("folder", "sentencepiece") or not isinstance(files, dict) or not files:
            raise DistillError(f"served teacher at {self.url}: malformed tokenizer reply (kind {kind!r}).")
        allowed = TOKENIZER_FILES if kind == "folder" else ("tokenizer.model",)
        bad = sorted(n for n in files if n not in allowed)
        if bad:
            raise DistillError(f"served teacher at {self.url}: unexpected tokenizer files {bad}; accepted: {list(allowed)}.")
        try:
            data = {n: base64.b64decode(v, validate=True) for n, v in files.items()}
        except (ValueError, TypeError):
            raise DistillError(f"served teacher at {self.url}: the tokenizer files are not valid base64.") from None
        digest = hashlib.sha256()
        for n, b in sorted(data.items()):
            digest.update(n.encode() + b"\0" + hashlib.sha256(b).digest())
        if out.get("sha256") != digest.hexdigest():
            raise DistillError(f"served teacher at {self.url}: the tokenizer files do not match their checksum.")
        return kind, data

    def topk(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, k: int = 32,
             temperature: float = 1.0, device: str | torch.device = "cpu", with_tail: bool = False):
        body = {"input_ids": input_ids.tolist(), "k": k, "temperature": temperature}
        if attention_mask is not None:
            body["attention_mask"] = attention_mask.tolist()
        out = self._call("POST", "/v1/topk", body)
        self._check_same_model(out)
        res = CachedOutputs(torch.tensor(out["indices"], dtype=torch.long, device=device),
                            torch.tensor(out["logprobs"], dtype=torch.float32, device=device))
        if with_tail:
            return res, torch.tensor(out["log_tail"], dtype=torch.float32, device=device)
        return res
