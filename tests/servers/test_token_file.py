"""The HTTP bearer token need not be on the command line, where every local user can read it in the
process list (red-team R3-16): ``--token-file`` or ``ASTRA_ENV_TOKEN``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from astra.servers._runtime import TOKEN_ENV, TokenError, resolve_token

BODY = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
ACCEPT = {"Accept": "application/json, text/event-stream"}


def test_token_sources_and_their_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    secret = tmp_path / "token"
    secret.write_text("file-secret\n")
    secret.chmod(0o600)
    assert resolve_token(None, secret) == "file-secret"
    assert capsys.readouterr().err == ""
    secret.chmod(0o644)
    assert resolve_token(None, secret) == "file-secret"
    assert "readable by other users" in capsys.readouterr().err
    assert resolve_token("argv-secret", None) == "argv-secret"
    assert "process list" in capsys.readouterr().err
    assert resolve_token(None, None) is None
    monkeypatch.setenv(TOKEN_ENV, "env-secret")
    assert resolve_token(None, None) == "env-secret"
    with pytest.raises(TokenError, match="not both"):
        resolve_token("a", secret)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        resolve_token(None, tmp_path / "empty")
    with pytest.raises(TokenError, match="missing"):
        resolve_token(None, tmp_path / "missing")


@pytest.mark.anyio
async def test_server_py_takes_its_token_from_a_file_and_keeps_it_out_of_argv(
    emitted: Path, tmp_path: Path, launch: Any
) -> None:
    secret = tmp_path / "token"
    secret.write_text("file-secret-4f2a\n")
    secret.chmod(0o600)
    with launch(emitted, "--token-file", str(secret), token=None) as server:
        argv = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().split(b"\0")
        assert not any(b"file-secret" in part for part in argv)
        async with httpx2.AsyncClient() as raw:
            refused = await raw.post(server.url, json=BODY, headers=ACCEPT)
            assert refused.status_code == 401
            wrong = await raw.post(server.url, json=BODY, headers={**ACCEPT, "Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        async with httpx2.AsyncClient(headers={"Authorization": "Bearer file-secret-4f2a"}) as http_client:
            async with Client(streamable_http_client(server.url, http_client=http_client)) as client:
                assert "create_order" in [t.name for t in (await client.list_tools()).tools]
