"""A served teacher: top-k log-probabilities by token id over HTTP, so that students on other
machines or processes need not load the teacher.

    distill serve-teacher runs/cache/teacher_hf --port 8765          # binds 127.0.0.1 by default

POST /v1/topk  {"input_ids": [[...]], "attention_mask": [[...]] (optional), "k": 32, "temperature": 1.0}
  -> {"indices": [[[...]]] (B, T, k), "logprobs": [[[...]]] (B, T, k), "fingerprint": "...", "vocab_size": V}
  (plus "log_tail": (B, T), the exact log of the probability mass outside the top-k)
  with "token_logprobs": true, also "token_logprobs": (B, T), the log-prob at temperature 1 of the
  next input token at each position (0 where no attended token follows), what `alm` reads;
  with "vocab": n, everything is normalised over the first n output rows only (the tokenizer's
  length, for a head padded past it)
GET  /v1/info  -> {"fingerprint", "vocab_size", "max_k", "max_tokens", "max_positions", "tokenizer"}
GET  /v1/stats -> {"requests", "rows", "forwards"}: answered so far, and the batched teacher forwards run
GET  /v1/tokenizer -> {"fingerprint", "kind", "files": {name: base64 bytes}}
  the teacher's tokenizer as data: the tokenizer files of a folder ("kind": "folder"; only the
  known data files: tokenizer.json, vocab/merges, SentencePiece models, JSON configs; never code or
  pickles), or one SentencePiece model ("kind": "sentencepiece", served as tokenizer.model)

Every bad request is answered with a JSON {"error": ...} that names the field: 400 (token ids
outside the vocabulary, negative, float or bool ids, empty or ragged rows, a bad mask, k or
temperature, a body that is not JSON, unknown fields), 413 (a body over the byte limit or more
tokens than --max-tokens), 401 (a missing or wrong bearer token), 404 (an unknown path), 503
(too many waiting) and 500 (the model failed); the server keeps serving. Requests from all
clients are run together in batches by one worker (see `Batcher`).

Log-probs are normalised over the full vocabulary at the given temperature (float32; JSON floats
round-trip exactly), so `losses.sparse_divergence` gives the same value as with the in-process
teacher's top-k. Requests and responses are plain JSON: nothing received is ever unpickled.
Every reply carries the served model's weights fingerprint; a client refuses a reply whose
fingerprint differs from the one it saw when it connected (the server now serves another model).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import os
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable
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
def next_token_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T): the token after each position (0 at the last, which has none)."""
    return F.pad(input_ids[:, 1:], (0, 1), value=0)


def topk_logprobs(teacher: Teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, k: int,
                  temperature: float = 1.0, with_tail: bool = False, with_tokens: bool = False,
                  vocab: int | None = None):
    """Top-k (indices, log-probs) of a causal LM at every position. (B, T) -> (B, T, k) each;
    with `with_tail`, also the exact log of the remaining mass (B, T), floored at -1e4; with
    `with_tokens` (and `with_tail`), also the log-prob at temperature 1 of the next input token at
    each position (B, T; 0 at the last); with `vocab`, over the first `vocab` output rows. From the model's full logits; `make_server(topk=...)` takes
    another function with this signature (the language-model family's builds the log-probs a block
    of positions at a time)."""
    out = teacher(input_ids=input_ids, attention_mask=attention_mask)
    logits = out.logits if hasattr(out, "logits") else out
    logits = logits[..., :vocab] if vocab else logits
    lp = F.log_softmax(logits.float() / temperature, dim=-1)
    top = lp.topk(min(k, lp.shape[-1]), dim=-1)
    result = CachedOutputs(top.indices, top.values)
    if not with_tail:
        return result
    rest = lp.scatter(-1, top.indices, float("-inf")).logsumexp(-1).clamp(min=-1.0e4)
    if not with_tokens:
        return result, rest
    nxt = next_token_ids(input_ids)
    tok = F.log_softmax(logits.float(), dim=-1).gather(-1, nxt[..., None].to(logits.device))[..., 0]
    tok[:, -1] = 0.0
    return result, rest, tok


class RequestError(ValueError):
    """A request the server refuses: `status` (400, 413, ...) and a message naming the field."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


TOPK_FIELDS = ("input_ids", "attention_mask", "k", "temperature", "token_logprobs", "vocab")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _matrix(req: dict[str, Any], field: str, what: str) -> list[list[int]]:
    rows = req[field]
    if not isinstance(rows, list) or not rows:
        raise RequestError(f"{field} must be a non-empty list of {what} lists (one per sequence), "
                           f"got {type(rows).__name__}{' (empty)' if rows == [] else ''}")
    width = None
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise RequestError(f"{field}[{i}] must be a list of {what}, got {type(row).__name__}")
        if not row:
            raise RequestError(f"{field}[{i}] is empty: every sequence needs at least one token")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise RequestError(f"{field} is ragged: row 0 has {width} entries, row {i} has {len(row)}; "
                               "pad every row to one length and mark the padding with attention_mask 0")
        for j, v in enumerate(row):
            if not _is_int(v):
                raise RequestError(f"{field}[{i}][{j}] is {v!r} ({type(v).__name__}): {what} must be integers")
    return rows


def parse_topk_request(req: Any, *, vocab_size: int, max_k: int, max_positions: int | None = None,
                       max_tokens: int = 1 << 16) -> tuple[list[list[int]], list[list[int]] | None, int, float]:
    """Check a POST /v1/topk body; (input_ids, attention_mask or None, k, temperature), or a
    RequestError naming the field (413 when there are more than `max_tokens` tokens in all).
    `token_logprobs` (a boolean) and `vocab` are checked here and read by `wants_token_logprobs` and
    `request_vocab`."""
    if not isinstance(req, dict):
        raise RequestError(f"the body must be a JSON object with input_ids (and optionally "
                           f"{', '.join(TOPK_FIELDS[1:])}), got {type(req).__name__}")
    unknown = sorted(set(req) - set(TOPK_FIELDS))
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; accepted: {list(TOPK_FIELDS)}")
    if "input_ids" not in req:
        raise RequestError("input_ids is missing: give a list of token-id lists, e.g. {\"input_ids\": [[1, 2, 3]]}")
    ids = _matrix(req, "input_ids", "token ids")
    n_rows, width = len(ids), len(ids[0])
    if n_rows * width > max_tokens:
        raise RequestError(f"input_ids holds {n_rows} x {width} = {n_rows * width} tokens, more than this server's "
                           f"limit of {max_tokens} per request; split it into smaller requests", status=413)
    if max_positions and width > max_positions:
        raise RequestError(f"input_ids rows have {width} tokens, more than the served model's {max_positions} "
                           "positions; send shorter sequences")
    for i, row in enumerate(ids):
        for j, v in enumerate(row):
            if not 0 <= v < vocab_size:
                raise RequestError(f"input_ids[{i}][{j}] = {v} is not a token id of the served model "
                                   f"(0 <= id < {vocab_size})")
    mask = None
    if req.get("attention_mask") is not None:
        mask = _matrix(req, "attention_mask", "0/1 values")
        if len(mask) != n_rows or len(mask[0]) != width:
            raise RequestError(f"attention_mask is {len(mask)} x {len(mask[0])} but input_ids is {n_rows} x {width}; "
                               "they must have the same shape")
        for i, row in enumerate(mask):
            if any(v not in (0, 1) for v in row):
                raise RequestError(f"attention_mask[{i}] holds values other than 0 and 1")
            if not any(row):
                raise RequestError(f"attention_mask[{i}] is all 0: every sequence needs at least one attended token")
    k = req.get("k", max_k)
    if not _is_int(k) or not 1 <= k <= max_k:
        raise RequestError(f"k must be an integer in [1, {max_k}], got {k!r}")
    temperature = req.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise RequestError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not isinstance(req.get("token_logprobs", False), bool):
        raise RequestError(f"token_logprobs must be true or false, got {req['token_logprobs']!r}")
    if req.get("vocab") is not None:
        n = req["vocab"]
        if not _is_int(n) or not 1 <= n <= vocab_size:
            raise RequestError(f"vocab must be an integer in [1, {vocab_size}] (the output rows the log-probs are "
                               f"normalised over), got {n!r}")
        if k > n:
            raise RequestError(f"k ({k}) is more than vocab ({n}): there are only {n} tokens to rank")
        for i, row in enumerate(ids if req.get("token_logprobs", False) else []):
            for j, v in enumerate(row[1:], 1):
                if v >= n:
                    raise RequestError(f"input_ids[{i}][{j}] = {v} is outside vocab ({n}): its log-prob over the "
                                       f"first {n} rows is undefined; raise vocab or drop that token")
    return ids, mask, int(k), float(temperature)


def wants_token_logprobs(req: dict[str, Any]) -> bool:
    """Whether a (checked) request asks for the log-prob of each next input token as well."""
    return bool(req.get("token_logprobs", False))


def request_vocab(req: dict[str, Any]) -> int | None:
    """The output rows a (checked) request's log-probs are normalised over; None: all of them."""
    return int(req["vocab"]) if req.get("vocab") is not None else None


class _Job:
    __slots__ = ("ids", "mask", "k", "temperature", "tokens", "vocab", "done", "result", "error")

    def __init__(self, ids, mask, k, temperature, tokens=False, vocab=None):
        self.ids, self.mask, self.k, self.temperature, self.tokens = ids, mask, k, temperature, tokens
        self.vocab = vocab
        self.done = threading.Event()
        self.result = self.error = None


class Batcher:
    """One worker thread that runs the teacher for every request. Requests that arrive while it is
    busy, or within `wait_s` of the first, and that ask for the same k and temperature, are run as
    one batch: rows right-padded to the longest (padding masked, and after every real token, so a
    causal model's outputs at real positions do not see it) and split back in order. At most
    `max_rows` rows and `max_tokens` padded tokens per forward; `max_rows=1` runs each request alone."""

    def __init__(self, teacher: Teacher, device, *, max_rows: int = 32, max_tokens: int = 1 << 16,
                 wait_s: float = 0.002, max_pending: int = 1024, topk: Callable | None = None):
        import queue

        self.teacher, self.device = teacher, device
        self.topk = topk or topk_logprobs
        self.max_rows, self.max_tokens, self.wait_s = max_rows, max_tokens, wait_s
        self.queue: queue.Queue[_Job] = queue.Queue(max_pending)
        self.forwards = self.requests = self.rows = 0  # teacher forwards run, requests and rows answered
        self._held: list[_Job] = []  # jobs taken from the queue that did not fit the current batch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="distill-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, ids, mask, k, temperature, timeout: float = 600.0, tokens: bool = False,
               vocab: int | None = None):
        """(indices, log-probs, log tail) lists of the request, and with `tokens` the next tokens'
        log-probs as a fourth; over the first `vocab` output rows when given."""
        import queue

        job = _Job(ids, mask, k, temperature, tokens, vocab)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise RequestError("the server has too many requests waiting; retry shortly", status=503) from None
        if not job.done.wait(timeout):
            raise RequestError(f"the teacher did not answer within {timeout:.0f} s", status=503)
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _next(self, block: bool, timeout: float | None = None):
        import queue

        if self._held:
            return self._held.pop(0)
        try:
            return self.queue.get(block, timeout)
        except queue.Empty:
            return None

    def _loop(self) -> None:
        import time

        while not self._stop.is_set():
            first = self._next(True, 0.1)
            if first is None:
                continue
            batch, rows = [first], len(first.ids)
            width = len(first.ids[0])
            deadline = time.monotonic() + self.wait_s
            skipped = []
            while rows < self.max_rows:
                job = self._next(True, max(0.0, deadline - time.monotonic()))
                if job is None:
                    break
                w = max(width, len(job.ids[0]))
                if (job.k, job.temperature, job.tokens, job.vocab) != (first.k, first.temperature, first.tokens,
                                                                       first.vocab) \
                        or rows + len(job.ids) > self.max_rows \
                        or (rows + len(job.ids)) * w > self.max_tokens:
                    skipped.append(job)
                    continue
                batch.append(job)
                rows, width = rows + len(job.ids), w
            self._held = skipped + self._held
            self._run(batch, width)

    def _run(self, batch: list[_Job], width: int) -> None:
        try:
            ids, mask = [], []
            padded = len(batch) > 1 and any(len(j.ids[0]) != width for j in batch)
            for j in batch:
                pad = width - len(j.ids[0])
                for i, row in enumerate(j.ids):
                    ids.append(row + [0] * pad)
                    mask.append((j.mask[i] if j.mask is not None else [1] * len(row)) + [0] * pad)
            need_mask = padded or any(j.mask is not None for j in batch)
            t_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
            t_mask = torch.tensor(mask, dtype=torch.long, device=self.device) if need_mask else None
            tokens, vocab = batch[0].tokens, batch[0].vocab
            got = self.topk(self.teacher, t_ids, t_mask, batch[0].k, batch[0].temperature, with_tail=True,
                            **({"with_tokens": True} if tokens else {}), **({"vocab": vocab} if vocab else {}))
            out, tail = got[0], got[1]
            self.forwards += 1
            self.requests += len(batch)
            self.rows += len(ids)
            indices, logprobs, tail = out.indices.cpu(), out.logprobs.cpu(), tail.cpu()
            tok = None
            if tokens:  # 0 where the next position is not an attended token of the row (none follows)
                follows = F.pad(torch.tensor(mask, dtype=torch.bool)[:, 1:], (0, 1), value=False)
                tok = got[2].cpu().masked_fill(~follows, 0.0)
            r = 0
            for j in batch:
                n, t = len(j.ids), len(j.ids[0])
                res = [indices[r:r + n, :t].tolist(), logprobs[r:r + n, :t].tolist(), tail[r:r + n, :t].tolist()]
                if tok is not None:
                    res.append(tok[r:r + n, :t].tolist())
                j.result = tuple(res)
                r += n
        except Exception as e:  # noqa: BLE001 - every waiting client gets the error, the worker lives on
            for j in batch:
                j.error = e
        finally:
            for j in batch:
                j.done.set()


def _model_limits(module) -> tuple[int, int | None]:
    """(vocabulary size of the input embedding, the most positions or None) of a served model."""
    vocab = 0
    get = getattr(module, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if emb is not None and hasattr(emb, "num_embeddings"):
        vocab = int(emb.num_embeddings)
    cfg = getattr(module, "config", None)
    vocab = vocab or int(getattr(cfg, "vocab_size", 0) or 0)
    positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    return vocab, (int(positions) if positions else None)


def _handler(teacher: Teacher, max_k: int, batcher: Batcher, tokenizer: dict[str, Any] | None = None,
             token: str | None = None, max_tokens: int = 1 << 16):
    vocab_size, max_positions = _model_limits(teacher.module)
    info = {"fingerprint": teacher.fingerprint(), "max_k": max_k, "vocab_size": vocab_size,
            "max_tokens": max_tokens, "max_positions": max_positions,
            "tokenizer": tokenizer["kind"] if tokenizer else None}
    tok_reply = None
    if tokenizer:
        files = {n: base64.b64encode(b).decode("ascii") for n, b in sorted(tokenizer["files"].items())}
        digest = hashlib.sha256()
        for n, b in sorted(tokenizer["files"].items()):
            digest.update(n.encode() + b"\0" + hashlib.sha256(b).digest())
        tok_reply = json.dumps({"fingerprint": info["fingerprint"], "kind": tokenizer["kind"], "files": files,
                                "sha256": digest.hexdigest()}).encode()
    expected = f"Bearer {token}".encode() if token else None

    class Handler(BaseHTTPRequestHandler):
        timeout = 60  # seconds a client may take to send its request

        def log_message(self, *args):  # quiet by default
            pass

        def _send(self, code: int, body: dict | bytes, headers: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if expected is None:
                return True
            got = (self.headers.get("Authorization") or "").encode()
            if hmac.compare_digest(got, expected):
                return True
            self.close_connection = True
            self._send(401, {"error": "this server needs a bearer token: send 'Authorization: Bearer TOKEN' "
                                      "(RemoteTeacher(token=...) or DISTILL_SERVE_TOKEN)"},
                       {"WWW-Authenticate": "Bearer"})
            return False

        def do_GET(self):
            if not self._authorised():
                return
            if self.path == "/v1/info":
                self._send(200, info)
            elif self.path == "/v1/stats":
                self._send(200, {"requests": batcher.requests, "rows": batcher.rows, "forwards": batcher.forwards})
            elif self.path == "/v1/tokenizer":
                if tok_reply is None:
                    self._send(404, {"error": "this server has no tokenizer to give (the served model's folder holds "
                                              "no tokenizer files); load one locally (teacher.path or teacher.tokenizer)"})
                else:
                    self._send(200, tok_reply)
            else:
                self._send(404, {"error": f"unknown path {self.path}; use GET /v1/info, GET /v1/stats, GET /v1/tokenizer or "
                                          "POST /v1/topk"})

        def do_POST(self):
            if not self._authorised():
                return
            if self.path != "/v1/topk":
                self.close_connection = True
                return self._send(404, {"error": f"unknown path {self.path}; use POST /v1/topk"})
            try:
                try:
                    n = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    raise RequestError("the request needs a Content-Length header", status=411) from None
                if n <= 0:
                    raise RequestError("the request body is empty: send a JSON object with input_ids")
                if n > MAX_BODY:
                    raise RequestError(f"the request body is {n} bytes, more than the limit of {MAX_BODY}", status=413)
                raw = self.rfile.read(n)
                try:
                    req = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise RequestError(f"the body is not JSON ({e})") from None
                ids, mask, k, temperature = parse_topk_request(req, vocab_size=vocab_size, max_k=max_k,
                                                               max_positions=max_positions, max_tokens=max_tokens)
                tokens = wants_token_logprobs(req)
                indices, logprobs, tail, *tok = batcher.submit(ids, mask, k, temperature, tokens=tokens,
                                                               vocab=request_vocab(req))
            except RequestError as e:
                if e.status in (411, 413):
                    self.close_connection = True  # the body was not read
                return self._send(e.status, {"error": str(e)})
            except Exception as e:  # noqa: BLE001 - a reply, never a dropped connection
                traceback.print_exc(file=sys.stderr)
                return self._send(500, {"error": f"the teacher failed on this request: {type(e).__name__}: {e}"})
            self._send(200, {"indices": indices, "logprobs": logprobs, "log_tail": tail,
                             **({"token_logprobs": tok[0]} if tok else {}), **info})

    return Handler


class TeacherServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: many clients connecting at once (socketserver's default is 5)
    batcher: Batcher

    def server_close(self) -> None:
        super().server_close()
        self.batcher.close()


def make_server(teacher: Teacher, host: str = "127.0.0.1", port: int = 8765, max_k: int = 64,
                device: str | torch.device = "cpu", allow_remote: bool = False,
                tokenizer: str | Path | None = None, token: str | None = None, max_batch: int = 32,
                max_tokens: int = 1 << 16, batch_wait_ms: float = 2.0, topk: Callable | None = None) -> TeacherServer:
    """An HTTP server for `teacher` (call `.serve_forever()`; `.server_address` has the port).

    `tokenizer` (a tokenizer folder or a SentencePiece `.model` file) is offered at GET /v1/tokenizer;
    by default, the folder the teacher was loaded from (its config's `name_or_path`), if that folder
    holds tokenizer files. With `token`, every request must carry `Authorization: Bearer <token>`; a
    non-loopback `host` needs both `allow_remote` and a token. Requests from all clients are batched
    (`max_batch` rows, `max_tokens` tokens per forward, waiting up to `batch_wait_ms` for more);
    `max_batch=1` runs each request alone. `topk`: the function that answers a batch (default
    `topk_logprobs`)."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allow_remote:
        raise DistillError(f"serve-teacher: refusing to bind {host!r}, which is not a loopback address; "
                           "pass --allow-remote (with --token) to expose the teacher beyond this machine.")
    if not loopback and not token:
        raise DistillError(f"serve-teacher: binding {host!r} exposes the teacher beyond this machine, so it needs a "
                           "bearer token: pass --token or set DISTILL_SERVE_TOKEN.")
    if token is not None and len(token) < 16:
        raise DistillError("serve-teacher: the token must have at least 16 characters "
                           "(e.g. python -c 'import secrets; print(secrets.token_urlsafe())').")
    if max_batch < 1 or max_tokens < 1:
        raise DistillError("serve-teacher: --max-batch and --max-tokens must be >= 1.")
    if tokenizer is None:
        origin = getattr(getattr(teacher.module, "config", None), "_name_or_path", None)
        tokenizer = origin if origin and Path(origin).is_dir() else None
    payload = tokenizer_payload(tokenizer)
    teacher.to(device)
    batcher = Batcher(teacher, device, max_rows=max_batch, max_tokens=max_tokens, wait_s=batch_wait_ms / 1000,
                      topk=topk)
    try:
        server = TeacherServer((host, port), _handler(teacher, max_k, batcher, payload, token, max_tokens))
    except BaseException:
        batcher.close()
        raise
    server.batcher = batcher
    return server


class RemoteTeacher:
    """Client of a served teacher: `topk(input_ids, attention_mask, k)` -> CachedOutputs on `device`;
    `tokenizer_files()` -> (kind, {name: bytes}). Replies from a model other than the one seen at
    connection (another fingerprint) are refused."""

    def __init__(self, url: str, timeout: float = 60.0, token: str | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token if token is not None else os.environ.get("DISTILL_SERVE_TOKEN") or None
        self.info = self._call("GET", "/v1/info")

    def _call(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            for attempt in range(3):  # every call is a read: a connection reset under load is tried again
                try:
                    with urllib.request.urlopen(req, timeout=self.timeout) as r:
                        return json.loads(r.read())
                except (ConnectionResetError, urllib.error.URLError) as e:
                    reset = isinstance(e, ConnectionResetError) or isinstance(
                        getattr(e, "reason", None), ConnectionResetError)
                    if isinstance(e, urllib.error.HTTPError) or not reset or attempt == 2:
                        raise
                    time.sleep(0.05 * (attempt + 1))
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", "")
            except (ValueError, AttributeError, OSError):
                message = e.reason
            raise DistillError(f"served teacher at {self.url}: {e.code} {message}") from None
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
             temperature: float = 1.0, device: str | torch.device = "cpu", with_tail: bool = False,
             with_tokens: bool = False, vocab: int | None = None):
        """The served top-k (as `topk_logprobs`); with `with_tail` also the log tail, with
        `with_tokens` (and `with_tail`) also the next input tokens' log-probs at temperature 1; with
        `vocab`, normalised over the first `vocab` output rows."""
        body = {"input_ids": input_ids.tolist(), "k": k, "temperature": temperature}
        if with_tokens:
            body["token_logprobs"] = True
        if vocab:
            body["vocab"] = int(vocab)
        if attention_mask is not None:
            body["attention_mask"] = attention_mask.tolist()
        out = self._call("POST", "/v1/topk", body)
        self._check_same_model(out)
        res = CachedOutputs(torch.tensor(out["indices"], dtype=torch.long, device=device),
                            torch.tensor(out["logprobs"], dtype=torch.float32, device=device))
        if with_tail:
            tail = torch.tensor(out["log_tail"], dtype=torch.float32, device=device)
            if with_tokens:
                if "token_logprobs" not in out:
                    raise DistillError(f"teacher.url: the served teacher at {self.url} does not answer token_logprobs "
                                      "(an older `distill serve-teacher`); serve it with this version.")
                return res, tail, torch.tensor(out["token_logprobs"], dtype=torch.float32, device=device)
            return res, tail
        return res
