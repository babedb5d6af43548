"""Adapters: public data sets → the canonical input schema (artifacts.schema), as files ingest reads.

`amazon.convert_amazon` handles the S3-Rec Amazon review sequences in ../shared/data.
"""
