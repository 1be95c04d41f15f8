"""The one client of the REST API, for the `baton` command, `baton demo` and the end-to-end tests:
one requests.Session, a timeout on every call, and every failure (no answer, or an HTTP error)
translated here into ClientError carrying the problem document."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

TIMEOUT = 15.0
PAGE_SIZE = 1000  # the most a collection answers per request


class ClientError(Exception):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        detail = problem.get("detail") or problem.get("title") or "request failed"
        errors = problem.get("errors")
        fields = "".join(f"\n  {k}: {'; '.join(map(str, v))}" for k, v in (errors or {}).items())
        status_ = f"{status} " if status else ""  # 0: no answer at all
        super().__init__(f"{status_}{problem.get('title', '')}: {detail}{fields}")


class ApiClient:
    def __init__(self, base_url: str, token: str | None) -> None:
        # Imported here: every process loads this module with the `baton` command, and only the
        # client commands need requests (a sixth of a process's start).
        import requests

        self.base = base_url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def call(self, method: str, path: str, *, json: Any = None, params: Any = None,
             headers: dict[str, str] | None = None, timeout: float = TIMEOUT) -> requests.Response:
        import requests

        try:
            response = self.session.request(method, f"{self.base}{path}", json=json, params=params,
                                            headers=headers, timeout=timeout)
        except requests.Timeout as exc:
            raise ClientError(0, {"title": "Unreachable", "detail": f"{self.base} did not answer "
                                  f"within {timeout:g} s"}) from exc
        except requests.RequestException as exc:
            raise ClientError(0, {"title": "Unreachable", "detail": f"{self.base}: {_root(exc)} "
                                  "(is BATON_API_URL right, and the API up?)"}) from exc
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"title": response.reason, "detail": response.text[:500]}
            raise ClientError(response.status_code, problem)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, **kwargs).json()

    def items(self, path: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
        """Every item of a collection (`{"items", "next_cursor"}`), following the cursor page by page."""
        query = {**(params or {}), "limit": PAGE_SIZE}
        while True:
            page = self.json("GET", path, params=query)
            yield from page["items"]
            if not page["next_cursor"]:
                return
            query["cursor"] = page["next_cursor"]

    def ready(self, timeout: float = 2.0) -> bool:
        """Whether the API answers /readyz with 200 (not yet up, or 503: False)."""
        try:
            self.call("GET", "/readyz", timeout=timeout)
        except ClientError:
            return False
        return True

    def workflow(self, cid: str) -> dict[str, Any]:
        found: dict[str, Any] = self.json("GET", f"/v1/workflows/{cid}")
        return found

    def start(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        result: dict[str, Any] = self.json("POST", "/v1/workflows", json=body, headers=headers)
        return result

    def intervene(self, cid: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.json("POST", f"/v1/workflows/{cid}/{action}", json=body)
        return result


def _root(exc: BaseException) -> BaseException:
    """The innermost cause (`[Errno 111] Connection refused`), not urllib3's wrapping of it."""
    for _ in range(8):  # a few wrappings deep; never follow a cycle
        reason = getattr(exc, "reason", None)
        inner = exc.__cause__ or (reason if isinstance(reason, BaseException) else None) or (
            exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None)
        if inner is None:
            break
        exc = inner
    return exc
