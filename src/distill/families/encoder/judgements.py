"""Evaluation against human judgements, for any encoder: agreement with the teacher says nothing
about quality where the teacher is wrong.

- STS: sentence pairs with human similarity scores (STS-B, SICK-R, ...); Spearman and Pearson
  correlation between the cosine of the two embeddings and the human score.
- Retrieval: a BEIR data set folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv); exact cosine
  search, nDCG@10 (trec_eval's linear gain, as BEIR and MTEB report it), MRR@10, Recall@100.
- MTEB: the named tasks through mteb's own runner, when `mteb` is installed and its data is in
  the local Hugging Face cache.

Every figure is x100, the scale the MTEB leaderboard and the BEIR/STS papers print
(mteb itself stores 0-1). `encode` is any `encode(list[str]) -> (N, D)` tensor; `load_encoder`
makes one from a sentence-transformers, model2vec or `distill run` folder.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from distill.data.jsonl import jsonl_rows, open_text
from distill.errors import DistillError

Encode = Callable[[list[str]], torch.Tensor]

SCORE_COLUMNS = ("score", "label", "similarity_score")  # the first one present is read


class STSPairs(NamedTuple):
    """Sentence pairs and their human similarity scores, in file order."""

    sentence1: list[str]
    sentence2: list[str]
    score: list[float]


class BEIRData(NamedTuple):
    """corpus: id -> {"title", "text"}; queries: id -> text; qrels: query id -> {doc id: relevance}."""

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _base_suffix(path: Path) -> str:
    return Path(path.stem).suffix.lower() if path.suffix == ".gz" else path.suffix.lower()


def _float(value: Any, path: Path, line: int, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DistillError(f"{path}, line {line}: {what} {value!r} is not a number.") from None
    if math.isnan(out):
        raise DistillError(f"{path}, line {line}: {what} is NaN.")
    return out


# --- STS ----------------------------------------------------------------------------------------

def load_sts(path: str | os.PathLike, split: str = "test") -> STSPairs:
    """Pairs with human scores from a .tsv / .csv file with a header (columns sentence1, sentence2
    and score, label or similarity_score; the GLUE STS-B tsv and sentence-transformers'
    stsbenchmark.tsv.gz read as they are) or a .jsonl file (keys sentence1, sentence2, score or
    label). A `.gz` suffix is read compressed. When the file has a `split` column (all splits in one
    file), only the rows of `split` are kept."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DistillError(f"STS file {str(p)!r} does not exist (give a .tsv, .csv or .jsonl file of sentence pairs "
                           "with human scores).")
    kind = _base_suffix(p)
    if kind == ".jsonl":
        rows = jsonl_rows(p)
    elif kind in (".tsv", ".csv", ".txt"):
        rows = _table_rows(p, "," if kind == ".csv" else "\t")
    else:
        raise DistillError(f"STS file {str(p)!r}: unknown format {kind or '(no suffix)'!r}; use .tsv, .csv or .jsonl "
                           "(optionally .gz).")
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    has_split = False
    for line, row in rows:
        if split and "split" in row:
            has_split = True
            if str(row["split"]) != split:
                continue
        missing = [k for k in ("sentence1", "sentence2") if row.get(k) is None]
        key = next((k for k in SCORE_COLUMNS if row.get(k) not in (None, "")), None)
        if key is None:
            missing.append("score")
        if missing:
            where = ("field" if kind == ".jsonl" else "value") + ("s" if len(missing) > 1 else "")
            raise DistillError(
                f"{p}, line {line}: no {' / '.join(missing)} {where}. An STS file needs sentence1, sentence2 and a "
                f"human score ({', '.join(SCORE_COLUMNS)}) on every line; the GLUE STS-B test split has no scores, "
                "use its dev split.")
        s1.append(str(row["sentence1"]))
        s2.append(str(row["sentence2"]))
        scores.append(_float(row[key], p, line, key))
    if len(scores) < 2:
        extra = f" in split {split!r} (its `split` column)" if has_split else ""
        raise DistillError(f"{p}: {len(scores)} scored pair{'s' if len(scores) != 1 else ''}{extra}; a correlation "
                           "needs at least 2.")
    return STSPairs(s1, s2, scores)


def _table_rows(path: Path, delimiter: str) -> Iterable[tuple[int, dict[str, Any]]]:
    # tab-separated STS files (GLUE, sentence-transformers) hold unbalanced quotes: read them raw
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if header is None:
            raise DistillError(f"{path}: the file is empty.")
        names = [h.strip().lower() for h in header]
        if "sentence1" not in names or "sentence2" not in names:
            raise DistillError(f"{path}, line 1: the header {header!r} has no sentence1 / sentence2 column. Write a "
                               "header line naming the columns sentence1, sentence2 and score.")
        if not any(k in names for k in SCORE_COLUMNS):
            raise DistillError(f"{path}, line 1: the header {header!r} has no score column "
                               f"({', '.join(SCORE_COLUMNS)}). "
                               "Add the human scores in a column named score; the GLUE STS-B test split has none, "
                               "use its dev split.")
        for i, cells in enumerate(reader, start=2):
            if not cells or all(not c.strip() for c in cells):
                continue
            yield i, {n: (cells[j] if j < len(cells) else None) for j, n in enumerate(names)}


def _unique_embeddings(encode: Encode, texts: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
    """Each distinct text encoded once: (U, D) L2-normalised rows and each text's row index."""
    index: dict[str, int] = {}
    rows = [index.setdefault(t, len(index)) for t in texts]
    e = torch.as_tensor(encode(list(index))).float().cpu()
    return F.normalize(e, dim=-1), rows


def sts_scores(encode: Encode, pairs: STSPairs) -> dict[str, float]:
    """Spearman and Pearson correlation (x100, the MTEB leaderboard's scale; mteb's STS main score is
    this Spearman) between cos(e(sentence1), e(sentence2)) and the human score, over all pairs."""
    from scipy.stats import pearsonr, spearmanr

    e, rows = _unique_embeddings(encode, [*pairs.sentence1, *pairs.sentence2])
    n = len(pairs.score)
    idx = torch.tensor(rows)
    cos = (e[idx[:n]] * e[idx[n:]]).sum(-1).double().numpy()  # (n,)
    return {"spearman": 100 * float(spearmanr(cos, pairs.score)[0]),
            "pearson": 100 * float(pearsonr(cos, pairs.score)[0]), "pairs": n}


# --- retrieval ----------------------------------------------------------------------------------

def load_beir(folder: str | os.PathLike, split: str = "test") -> BEIRData:
    """A BEIR data set folder: corpus.jsonl ({"_id", "title", "text"}), queries.jsonl ({"_id",
    "text"}) and qrels/SPLIT.tsv (header `query-id corpus-id score`; a headerless TREC qrels file,
    `qid 0 docid relevance`, is read too). Qrels rows naming an unknown query or document are
    dropped (and counted in the error if none is left)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DistillError(f"retrieval folder {str(root)!r} does not exist (give a BEIR data set folder holding "
                           "corpus.jsonl, queries.jsonl and qrels/).")
    corpus_f, queries_f = root / "corpus.jsonl", root / "queries.jsonl"
    qrels_f = root / "qrels" / f"{split}.tsv"
    for f in (corpus_f, queries_f, qrels_f):
        if not f.is_file():
            found = sorted(x.name for x in (root / "qrels").glob("*.tsv")) if f == qrels_f else []
            hint = f" qrels/ holds {', '.join(found)}: pick one of those splits (--split)." if found else ""
            raise DistillError(f"{root}: no {f.relative_to(root)}. A BEIR folder holds corpus.jsonl, queries.jsonl "
                               f"and qrels/{split}.tsv.{hint}")
    corpus: dict[str, dict[str, str]] = {}
    for line, row in jsonl_rows(corpus_f):
        for key in ("_id", "text"):
            if key not in row:
                raise DistillError(f"{corpus_f}, line {line}: no {key!r} field; a corpus line is "
                                   '{"_id": ..., "title": ..., "text": ...}.')
        corpus[str(row["_id"])] = {"title": str(row.get("title") or ""), "text": str(row["text"] or "")}
    queries: dict[str, str] = {}
    for line, row in jsonl_rows(queries_f):
        for key in ("_id", "text"):
            if key not in row:
                raise DistillError(f"{queries_f}, line {line}: no {key!r} field; a query line is "
                                   '{"_id": ..., "text": ...}.')
        queries[str(row["_id"])] = str(row["text"])
    qrels: dict[str, dict[str, int]] = {}
    unknown_q = unknown_d = rows = 0
    for line, (qid, did, rel) in _qrels_rows(qrels_f):
        rows += 1
        if qid not in queries:
            unknown_q += 1
        elif did not in corpus:
            unknown_d += 1
        else:
            qrels.setdefault(qid, {})[did] = rel
    if not qrels:
        raise DistillError(f"{qrels_f}: none of its {rows} rows is usable ({unknown_q} name a query missing from "
                           f"queries.jsonl, {unknown_d} a document missing from corpus.jsonl). Check that the qrels "
                           "belong to this corpus and queries.")
    return BEIRData(corpus, queries, qrels)


def _qrels_rows(path: Path) -> Iterable[tuple[int, tuple[str, str, int]]]:
    with open(path, encoding="utf-8") as f:
        for i, text in enumerate(f, start=1):
            cells = text.strip().split("\t") if "\t" in text else text.split()
            if not cells or cells == [""]:
                continue
            if i == 1 and [c.strip().lower() for c in cells][:2] == ["query-id", "corpus-id"]:
                continue  # the BEIR header
            if len(cells) == 4:  # TREC: qid iteration docid relevance
                cells = [cells[0], cells[2], cells[3]]
            if len(cells) != 3:
                raise DistillError(f"{path}, line {i}: {len(cells)} columns; a qrels line is "
                                   "`query-id <tab> corpus-id <tab> score` (BEIR) or `qid 0 docid relevance` (TREC).")
            try:
                rel = int(float(cells[2]))
            except ValueError:
                hint = " (the header line must read `query-id corpus-id score`)" if i == 1 else ""
                raise DistillError(f"{path}, line {i}: relevance {cells[2]!r} is not a number{hint}.") from None
            yield i, (cells[0].strip(), cells[1].strip(), rel)


def _ndcg(ranked_rel: list[int], judged: Iterable[int], k: int) -> float:
    """trec_eval's ndcg_cut: gain = graded relevance, discount log2(rank + 1), ideal from the qrels."""
    dcg = sum(r / math.log2(i + 2) for i, r in enumerate(ranked_rel[:k]) if r > 0)
    ideal = sorted((r for r in judged if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


@torch.no_grad()
def retrieval_scores(encode: Encode, corpus: dict[str, dict[str, str]], queries: dict[str, str],
                     qrels: dict[str, dict[str, int]], k: int = 10, recall_at: int = 100, batch_size: int = 1024,
                     query_chunk: int = 256, ignore_identical_ids: bool = True) -> dict[str, float]:
    """Exact cosine search of every judged query over the whole corpus; nDCG@k, MRR@k and
    Recall@recall_at, means over queries, x100. A document is `title + " " + text` (stripped), as
    BEIR's sentence-transformers models read it; the corpus is encoded once, `batch_size` texts per
    call. A query whose qrels hold no relevant (> 0) document is skipped and counted. With
    `ignore_identical_ids` a document with the query's own id is never retrieved (as BEIR and mteb)."""
    doc_ids = list(corpus)
    texts = [(d["title"] + " " + d["text"]).strip() for d in corpus.values()]
    e_d = F.normalize(torch.cat([torch.as_tensor(encode(texts[i:i + batch_size])).float().cpu()
                                 for i in range(0, len(texts), batch_size)]), dim=-1)  # (N, D)
    judged = [q for q in qrels if q in queries and any(r > 0 for r in qrels[q].values())]
    skipped = sum(1 for q in qrels if q in queries) - len(judged)
    if not judged:
        raise DistillError("retrieval: no query has a relevant document in the qrels.")
    depth = min(max(k, recall_at), len(doc_ids))
    position = {d: i for i, d in enumerate(doc_ids)}
    ndcg = mrr = recall = 0.0
    for c in range(0, len(judged), query_chunk):
        qids = judged[c:c + query_chunk]
        e_q = F.normalize(torch.as_tensor(encode([queries[q] for q in qids])).float().cpu(), dim=-1)  # (Q, D)
        sims = e_q @ e_d.t()  # (Q, N)
        if ignore_identical_ids:
            for r, q in enumerate(qids):
                if q in position:
                    sims[r, position[q]] = -math.inf
        top = sims.topk(depth, dim=-1).indices.tolist()  # (Q, depth), best first
        for q, ranked in zip(qids, top):
            rel = qrels[q]
            ranked_rel = [rel.get(doc_ids[j], 0) for j in ranked]
            ndcg += _ndcg(ranked_rel, rel.values(), k)
            mrr += next((1.0 / (i + 1) for i, r in enumerate(ranked_rel[:k]) if r > 0), 0.0)
            n_rel = sum(1 for r in rel.values() if r > 0)
            recall += sum(1 for r in ranked_rel[:recall_at] if r > 0) / n_rel
    n = len(judged)
    return {f"ndcg@{k}": 100 * ndcg / n, f"mrr@{k}": 100 * mrr / n, f"recall@{recall_at}": 100 * recall / n,
            "queries": n, "queries_skipped": skipped, "corpus": len(doc_ids)}


# --- MTEB ---------------------------------------------------------------------------------------

def _require_mteb():
    try:
        import mteb
    except ImportError:
        raise DistillError("--mteb needs the mteb package: `pip install mteb` (>= 2). Its task data is read from the "
                           "Hugging Face cache, so without internet each task's data set must already be there "
                           "(run the task once on a connected machine and copy ~/.cache/huggingface over).") from None
    if not hasattr(mteb, "evaluate"):
        raise DistillError(f"mteb {getattr(mteb, '__version__', '?')} is too old; `pip install -U 'mteb>=2'`.")
    return mteb


def mteb_scores(model_path: str | os.PathLike, tasks: Sequence[Any], batch_size: int = 32) -> dict[str, float]:
    """Main score (x100) of each task, run by mteb's own runner (`mteb.evaluate`, mteb >= 2) on the
    folder loaded as a `SentenceTransformer` on the CPU. `tasks`: mteb task names (e.g.
    "STSBenchmark") or task objects. The data comes from the Hugging Face cache: offline, a task
    runs only if its data set was downloaded before."""
    mteb = _require_mteb()
    from sentence_transformers import SentenceTransformer

    objs, names = [], [t for t in tasks if isinstance(t, str)]
    for t in tasks:
        if isinstance(t, str):
            try:
                objs.extend(mteb.get_tasks(tasks=[t]))
            except KeyError as e:
                raise DistillError(f"mteb: unknown task {t!r} ({e.args[0] if e.args else e}). "
                                   "List them with `mteb available_tasks`.") from None
        else:
            objs.append(t)
    model = SentenceTransformer(str(model_path), device="cpu")
    try:
        result = mteb.evaluate(model, objs, cache=None, encode_kwargs={"batch_size": batch_size},
                               show_progress_bar=False)
    except (OSError, ConnectionError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        raise DistillError(f"mteb could not run {', '.join(names) or 'the tasks'}: {type(e).__name__}: {e}"
                           + (" The data sets must be in the local Hugging Face cache (offline mode is on)."
                              if offline else "")) from None
    return {r.task_name: 100 * float(r.main_score) for r in result.task_results}


# --- models -------------------------------------------------------------------------------------

class FolderEncoder:
    """`encode(texts) -> (N, D)` float tensor for a model folder; `kind` says how it was read."""

    def __init__(self, folder: Path, kind: str, model: Any, batch_size: int):
        self.folder, self.kind, self.model, self.batch_size = folder, kind, model, batch_size

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if self.kind == "model2vec":
            return torch.from_numpy(self.model.encode(list(texts), batch_size=self.batch_size)).float()
        return self.model.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                                 show_progress_bar=False).float().cpu()

    def __repr__(self) -> str:
        return f"FolderEncoder({str(self.folder)!r}, kind={self.kind!r})"


def _is_model2vec(folder: Path) -> bool:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "model2vec"
    except (json.JSONDecodeError, AttributeError):
        return False


def find_model_folder(path: str | os.PathLike) -> tuple[Path, str]:
    """(folder, kind) of the model in `path`: a model2vec folder (config.json with model_type
    model2vec), a sentence-transformers folder (modules.json; a `distill` student folder is one,
    its model2vec/ copy holds the same embeddings), or a `distill run` folder (its best `student/`)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DistillError(f"{str(p)!r} is not a folder; give a sentence-transformers, model2vec or `distill run` "
                           "folder.")
    if _is_model2vec(p):
        return p, "model2vec"
    if (p / "modules.json").is_file():
        return p, "sentence-transformers"
    if (p / "student" / "modules.json").is_file():  # runs/NAME: the best student
        return p / "student", "sentence-transformers"
    if _is_model2vec(p / "model2vec"):
        return p / "model2vec", "model2vec"
    students = sorted(x.name for x in (p / "students").glob("*") if (x / "modules.json").is_file())
    hint = f" It holds students/{{{', '.join(students)}}}: give one of those folders." if students else ""
    raise DistillError(f"{p}: holds no model to evaluate: no modules.json (sentence-transformers), no config.json "
                       f"with model_type model2vec, and no student/ folder of a `distill run`.{hint}")


def load_encoder(path: str | os.PathLike, batch_size: int = 32, device: str = "cpu") -> FolderEncoder:
    """An `encode(list[str]) -> (N, D)` for the model in `path` (see `find_model_folder`): loaded with
    `SentenceTransformer(folder, device=...)` or `model2vec.StaticModel.from_pretrained(folder)`."""
    folder, kind = find_model_folder(path)
    if kind == "model2vec":
        try:
            from model2vec import StaticModel
        except ImportError:
            raise DistillError(f"{folder} is a model2vec model; `pip install model2vec` to read it.") from None
        return FolderEncoder(folder, kind, StaticModel.from_pretrained(str(folder)), batch_size)
    from sentence_transformers import SentenceTransformer

    return FolderEncoder(folder, kind, SentenceTransformer(str(folder), device=device), batch_size)


def evaluate_folder(path: str | os.PathLike, sts: Sequence[str] = (), retrieval: Sequence[str] = (),
                    mteb_tasks: Sequence[str] = (), batch_size: int = 32, split: str = "test",
                    log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """All asked evaluations of one model folder: {"model", "kind", "sts": {file: ...},
    "retrieval": {folder: ...}, "mteb": {task: score}}. Files are read before the model is loaded,
    so a bad file fails fast."""
    pairs = {str(f): load_sts(f, split) for f in sts}
    beir = {str(d): load_beir(d, split) for d in retrieval}
    if mteb_tasks:
        _require_mteb()
    enc = load_encoder(path, batch_size)
    out: dict[str, Any] = {"model": str(enc.folder), "kind": enc.kind, "sts": {}, "retrieval": {}, "mteb": {}}
    for f, pr in pairs.items():
        log(f"sts: {f} ({len(pr.score)} pairs)")
        out["sts"][f] = sts_scores(enc, pr)
    for d, data in beir.items():
        log(f"retrieval: {d} ({len(data.corpus)} documents, {len(data.qrels)} judged queries)")
        out["retrieval"][d] = retrieval_scores(enc, *data)
    if mteb_tasks:
        log(f"mteb: {', '.join(mteb_tasks)}")
        out["mteb"] = mteb_scores(enc.folder, mteb_tasks, batch_size)
    return out


def load_sets(sts: Sequence[str] = (), retrieval: Sequence[str] = (), split: str = "test") -> dict[str, Any]:
    """The recipe's human-judgement sets (`eval.sts`, `eval.retrieval`), read once, under the names
    their metrics take in the results: `sts:STEM` (Spearman x100) and `ndcg@10:FOLDER` (x100)."""
    sets: dict[str, Any] = {}
    for kind, paths, load in (("sts", sts, load_sts), ("ndcg@10", retrieval, load_beir)):
        for p in paths:
            name = Path(p).name.split(".")[0] if kind == "sts" else Path(p).name
            key = f"{kind}:{name}"
            i = 2
            while key in sets:  # two files with one name: number them
                key, i = f"{kind}:{name}-{i}", i + 1
            sets[key] = load(p, split)
    return sets


def judge(encode: Encode, sets: dict[str, Any]) -> dict[str, float]:
    """Each set of `load_sets` scored with `encode`: {name: Spearman x100 or nDCG@10 x100}."""
    return {key: sts_scores(encode, data)["spearman"] if isinstance(data, STSPairs)
            else retrieval_scores(encode, *data)["ndcg@10"] for key, data in sets.items()}


def results_table(out: dict[str, Any]):
    """`evaluate_folder`'s result as a rich Table (one row per evaluation)."""
    from rich.table import Table

    table = Table(title=f"{out['model']} ({out['kind']}); scores x100")
    for col in ("evaluation", "data", "score", "details"):
        table.add_column(col)
    for f, m in out["sts"].items():
        table.add_row("sts spearman", f, f"{m['spearman']:.2f}", f"pearson {m['pearson']:.2f}, {m['pairs']} pairs")
    for d, m in out["retrieval"].items():
        skipped = f", {m['queries_skipped']} without a relevant document skipped" if m["queries_skipped"] else ""
        table.add_row("retrieval ndcg@10", d, f"{m['ndcg@10']:.2f}", f"mrr@10 {m['mrr@10']:.2f}, recall@100 "
                      f"{m['recall@100']:.2f}; {m['queries']} queries{skipped}; {m['corpus']} documents")
    for task, v in out["mteb"].items():
        table.add_row("mteb main score", task, f"{v:.2f}", "")
    return table


__all__ = ["BEIRData", "FolderEncoder", "STSPairs", "evaluate_folder", "find_model_folder", "judge", "load_beir",
           "load_encoder", "load_sets", "load_sts", "mteb_scores", "results_table", "retrieval_scores", "sts_scores"]
