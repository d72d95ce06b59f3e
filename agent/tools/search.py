"""search_code: the hybrid index search (Vector Set + BM25), with path and language filters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.tools.base import (
    Kind,
    Prepared,
    Tool,
    ToolContext,
    ToolError,
    ToolOutput,
    arg_int,
    arg_str,
    check_unknown,
    object_schema,
)

MODES = ("hybrid", "vector", "lexical")


class SearchCode(Tool):
    name = "search_code"
    description = "Search the code index (by meaning and identifiers). path: a glob; k: hits (default 5)."
    parameters = object_schema(
        ["query"],
        query={"type": "string"},
        path={"type": "string"},
        language={"type": "string"},
        k={"type": "integer"},
    )

    def prepare(self, arguments: Mapping[str, Any], ctx: ToolContext) -> Prepared:
        check_unknown(arguments, self.parameters["properties"])
        query = arg_str(arguments, "query").strip()
        if not query:
            raise ToolError("argument 'query' is empty")
        path = arg_str(arguments, "path", required=False) or None
        language = arg_str(arguments, "language", required=False) or None
        k = min(arg_int(arguments, "k", 5, minimum=1) or 5, ctx.limits.search_k)
        if ctx.open_index is None:
            raise ToolError("the code index is not available in this session (use grep or list_files)")
        title = f"search_code {query!r}" + (f" in {path}" if path else "")
        return Prepared(Kind.READ, title, query, lambda: self._run(ctx, query, path, language, k))

    def _run(self, ctx: ToolContext, query: str, path: str | None, lang: str | None, k: int) -> ToolOutput:
        assert ctx.open_index is not None
        hits = ctx.open_index().search(query, k=k, path_glob=path, lang=lang.lower() if lang else None)
        hits = [h for h in hits if not ctx.confine.is_secret(ctx.confine.root / h.path)]
        if not hits:
            return ToolOutput("(no results)", "0 results", data={"hits": []})
        parts = []
        for hit in hits:
            where = f"{hit.path}:{hit.start_line}-{hit.end_line}" + (f" ({hit.symbol})" if hit.symbol else "")
            parts.append(f"## {where} score {hit.score:.3f}\n{hit.text.rstrip()}")
        data = {"hits": [{"path": h.path, "start_line": h.start_line, "end_line": h.end_line,
                          "symbol": h.symbol, "score": h.score} for h in hits]}  # fmt: skip
        return ToolOutput("\n\n".join(parts), f"{len(hits)} results", data=data)
