"""The Python side of examples/traced.mjs: two tools that make spans and log records."""

import logging
import time
from collections.abc import Iterator

from snakepit_bridge import BaseAdapter, ToolContext, tool

log = logging.getLogger("recommender")


class Recommender(BaseAdapter):
    @tool
    def features(self, user: str, ctx: ToolContext) -> dict:
        """A user's features: loaded, then normalised."""
        with ctx.span("load features", user=user) as span:
            time.sleep(0.004)  # a database, say
            raw = [3.0, 1.0, 4.0, 1.0, 5.0]
            span.set_attribute("rows", len(raw))
        with ctx.span("normalize"):
            top = max(raw)
            vector = [x / top for x in raw]
        log.info("features of %s ready (%d values)", user, len(vector))
        return {"user": user, "vector": vector}

    @tool
    def recommend(self, vector: list, k: int, ctx: ToolContext) -> Iterator[dict]:
        """Streams the k best items for a feature vector, one span per item scored."""
        for rank in range(k):
            with ctx.span("score item", rank=rank):
                time.sleep(0.002)  # a model, say
                score = round(sum(vector) / (rank + 1), 3)
            if rank == k - 1:
                log.warning("only %d items were good enough", k)
            yield {"item": f"book-{rank}", "score": score}
