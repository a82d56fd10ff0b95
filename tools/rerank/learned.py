"""Re-ranking a global shortlist with a learned pairwise re-ranker (modeling/reranker.py) over the
local features of the query and the compact codes of each shortlisted database image.

    queries = query_batches(local_of_query, num_queries, n_query)     # per query, collated once
    logits = pair_logits(model, queries, codes, pairs, batch_size, device, coded)
    reranked = rerank_shortlists(shortlists, global_scores, logits, lam, gamma)

No config inside: tools/evaluation/methods/learned.py reads RERANKER.* and calls these. Each (query,
database image) pair is scored once, however many protocols' shortlists hold it; pairs are scored
in batches of ``batch_size`` on ``device``. The final score is the model's combination
lam * global + (1 - lam) * sigmoid(gamma * logit) (modeling.reranker.combine_scores); lam = 1 gives
the global scores themselves, so the global ranking.
"""

import numpy as np
import torch

from modeling.reranker import combine_scores
from modeling.reranker_inputs import LocalBatch, collate_locals, top_locals
from tools.rerank.superglobal import reranked_order


def query_batches(local_of_query, num_queries, n_query, global_descriptors=None):
    """One LocalBatch of all queries, padded to ``n_query`` locals each (the first n_query by
    attention): ``local_of_query(q)`` returns the q-th query's store features."""
    items = [top_locals(local_of_query(query), n_query) for query in range(num_queries)]
    return collate_locals(items, n=n_query, global_descriptors=global_descriptors)


def shortlist_pairs(shortlists):
    """[P, 2] int64 unique (query, database row) pairs over every protocol's shortlists."""
    pairs = [
        np.stack([np.full(len(rows), query), np.asarray(rows, np.int64)], axis=1)
        for per_query in shortlists.values()
        for query, rows in enumerate(per_query)
    ]
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


def _select(batch, index, device):
    """The rows ``index`` of a LocalBatch, on device."""
    return LocalBatch(*(None if field is None else field[index].to(device) for field in batch))


def database_batch(codes, rows, device, global_descriptors=None):
    """LocalBatch of some database rows' compact codes (binary codes come as +-1)."""
    taken = codes.take(rows)
    return LocalBatch(
        descriptors=torch.from_numpy(taken["descriptors"]).to(device),
        scales=torch.from_numpy(taken["scales"]).to(device),
        padding=torch.from_numpy(taken["padding"]).to(device),
        locations=torch.from_numpy(taken["locations"]).to(device),
        global_descriptor=None
        if global_descriptors is None
        else torch.from_numpy(np.asarray(global_descriptors[rows], np.float32)).to(device),
    )


@torch.no_grad()
def pair_logits(
    model, queries, codes, pairs, batch_size, device, coded=False, database_globals=None
):
    """{(query, row): logit} of every pair, scored ``batch_size`` pairs per forward.

    queries: LocalBatch of every query (query_batches); codes: CompactCodes of the database
    (tools/rerank/compact_codes.py); coded: the codes are a binary model's +-1 codes."""
    model.eval()
    device = torch.device(device)
    logits = np.zeros(len(pairs), np.float32)
    for start in range(0, len(pairs), max(1, int(batch_size))):
        chunk = pairs[start : start + batch_size]
        query = _select(queries, torch.from_numpy(chunk[:, 0]), device)
        database = database_batch(codes, chunk[:, 1], device, database_globals)
        out = model(query, database, database_coded=coded)
        logits[start : start + len(chunk)] = out.float().cpu().numpy()
    return {(int(q), int(row)): value for (q, row), value in zip(pairs, logits)}


def rerank_shortlists(shortlists, global_scores, logits, lam, gamma):
    """{protocol: per query, the shortlist sorted by the combined score (ties keep the global
    order)}. global_scores(query, rows) -> float32 global scores of those rows."""
    reranked = {}
    for protocol, per_query in shortlists.items():
        reranked[protocol] = []
        for query, rows in enumerate(per_query):
            rows = np.asarray(rows, np.int64)
            learned = torch.tensor([logits[(query, int(row))] for row in rows], dtype=torch.float32)
            scores = combine_scores(
                torch.from_numpy(np.asarray(global_scores(query, rows), np.float32)),
                learned,
                lam,
                gamma,
            )
            reranked[protocol].append(reranked_order(rows, scores.numpy()))
    return reranked
