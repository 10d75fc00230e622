"""Long-term storage (LTS): the chunk-store interface and its backends.

Empty in this first cut: segments live in the durable log only. A later issue adds the
file and S3 chunk stores, the chunk format and the uploader (DESIGN.md §7).
"""
