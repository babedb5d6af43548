"""Published full-ranking results on exactly the files in ../shared/data (quoted from each data
set's README, which cites the source of every row): the rows `aisle eval` reports next to its own.
Rerun nothing here; these are the papers' numbers, printed as such."""

from __future__ import annotations

# dataset name (the folder in ../shared/data) → row name → metrics
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "amazon-beauty-s3rec": {
        # S3-Rec paper (CIKM 2020), all_rank.PNG
        "PopRec (paper)": {"HR@5": 0.0080, "NDCG@5": 0.0044, "HR@10": 0.0152, "NDCG@10": 0.0068, "HR@20": 0.0217, "NDCG@20": 0.0084},
        "SASRec (S3-Rec paper)": {"HR@5": 0.0387, "NDCG@5": 0.0249, "HR@10": 0.0605, "NDCG@10": 0.0318, "HR@20": 0.0902, "NDCG@20": 0.0394},
        "S3-Rec": {"HR@5": 0.0387, "NDCG@5": 0.0244, "HR@10": 0.0647, "NDCG@10": 0.0327, "HR@20": 0.0994, "NDCG@20": 0.0414},
        # MCLRec (SIGIR 2023) README, RecBole TO_LS,full; its test log for @10
        "MCLRec": {"HR@5": 0.0581, "NDCG@5": 0.0352, "HR@10": 0.0871, "NDCG@10": 0.0446, "HR@20": 0.1243, "NDCG@20": 0.0539},
        # BSARec (AAAI 2024) logged test run
        "BSARec": {"HR@5": 0.0736, "NDCG@5": 0.0523, "HR@10": 0.1008, "NDCG@10": 0.0611, "HR@20": 0.1373, "NDCG@20": 0.0703},
    },
    "amazon-sports-s3rec": {
        "PopRec (paper)": {"HR@5": 0.0056, "NDCG@5": 0.0041, "HR@10": 0.0094, "NDCG@10": 0.0053, "HR@20": 0.0192, "NDCG@20": 0.0078},
        "SASRec (S3-Rec paper)": {"HR@5": 0.0233, "NDCG@5": 0.0154, "HR@10": 0.0350, "NDCG@10": 0.0192, "HR@20": 0.0507, "NDCG@20": 0.0231},
        "S3-Rec": {"HR@5": 0.0251, "NDCG@5": 0.0161, "HR@10": 0.0385, "NDCG@10": 0.0204, "HR@20": 0.0607, "NDCG@20": 0.0260},
        "MCLRec": {"HR@5": 0.0328, "NDCG@5": 0.0204, "HR@10": 0.0501, "NDCG@10": 0.0260, "HR@20": 0.0734, "NDCG@20": 0.0319},
    },
}


def published_rows(dataset: str) -> dict[str, dict[str, float]]:
    return PUBLISHED.get(dataset, {})
