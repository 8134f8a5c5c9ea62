"""LibreChat's code API. `/exec` is driven with LibreChat's own client, the code-execution tool of
the `@librechat/agents` npm package, on Node.js. `/upload`, `/download` and `/files` are called by
LibreChat's server app, which is not published as a package: they are exercised with httpx in the
shapes its `api/server/services/Files/Code` module sends and reads (multipart field `file`,
`X-API-Key`, `{message, session_id, files: [{fileId, filename}]}`, entries named `session/fileId`)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from live_server import KEY, OTHER_KEY

CLIENT_DIR = Path(__file__).parent / "librechat"


def exec_tool(server, args: dict, files: list | None = None, key: str = KEY, params: dict | None = None) -> dict:
    """One call of LibreChat's execute_code tool; its {content, artifact} or {error}. `params` are
    the tool's extra request fields (user_id, entity_id, session_id)."""
    assert (CLIENT_DIR / "node_modules" / "@librechat" / "agents").is_dir(), \
        "LibreChat's client is not installed: run `make npm-deps`"
    env = dict(os.environ, LIBRECHAT_CODE_BASEURL=f"{server.url}/librechat")
    out = subprocess.run(["node", str(CLIENT_DIR / "exec.cjs")], capture_output=True, text=True, env=env,
                         input=json.dumps({"apiKey": key, "args": args, "files": files, "params": params}),
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def http(server, key: str = KEY) -> httpx.Client:
    return httpx.Client(base_url=f"{server.url}/librechat", timeout=120,
                        headers={"X-API-Key": key, "User-Agent": "LibreChat/1.0"})


def test_exec_output_files_and_figures(server):
    code = ("import matplotlib.pyplot as plt\nprint(6 * 7)\nopen('/mnt/data/table.csv', 'w').write('a,b\\n1,2\\n')\n"
            "plt.plot([3, 1, 2])\nplt.show()")
    got = exec_tool(server, {"lang": "py", "code": code})
    assert got["content"].startswith("stdout:\n42\n")
    art = got["artifact"]
    assert sorted(f["name"] for f in art["files"]) == ["figure_1.png", "table.csv"]
    with http(server) as c:
        ids = {f["name"]: f["id"] for f in art["files"]}
        r = c.get(f"/download/{art['session_id']}/{ids['table.csv']}")
        assert r.status_code == 200 and r.content == b"a,b\n1,2\n"
        assert r.headers["content-type"].startswith("text/csv")
        png = c.get(f"/download/{art['session_id']}/{ids['figure_1.png']}")
        assert png.content.startswith(b"\x89PNG") and png.headers["content-type"] == "image/png"
        listing = c.get(f"/files/{art['session_id']}", params={"detail": "summary"}).json()
        assert {e["name"] for e in listing} == {f"{art['session_id']}/{i}" for i in ids.values()}
        assert all("lastModified" in e for e in listing)
        full = c.get(f"/files/{art['session_id']}", params={"detail": "full"}).json()
        assert {e["metadata"]["original-filename"] for e in full} == set(ids)
    with http(server, OTHER_KEY) as other:  # a session belongs to the key that made it
        assert other.get(f"/download/{art['session_id']}/{ids['table.csv']}").status_code == 404
        assert other.get(f"/files/{art['session_id']}").json() == []


def test_uploaded_files_are_inputs_of_a_later_exec(server):
    with http(server) as c:
        r = c.post("/upload", files={"file": ("sales.csv", b"total\n3\n4\n", "text/csv")},
                   data={"entity_id": "agent_1"}, headers={"User-Id": "user-1"})
    up = r.json()
    assert r.status_code == 200 and up["message"] == "success"
    ref = up["files"][0]
    assert ref["filename"] == "sales.csv" and len(ref["fileId"]) == 21 and len(up["session_id"]) == 21
    files = [{"id": ref["fileId"], "resource_id": "user-1", "name": "sales.csv",
              "storage_session_id": up["session_id"], "kind": "user"}]
    code = "import pandas as pd\nprint(pd.read_csv('/mnt/data/sales.csv').total.sum())"
    got = exec_tool(server, {"lang": "py", "code": code}, files=files)
    assert got["content"].rstrip() == "stdout:\n7", got


def test_errors_reach_the_model_as_stderr(server):
    got = exec_tool(server, {"lang": "py", "code": "print('before')\nraise KeyError('missing')"})
    assert got["content"].startswith("stdout:\nbefore\n")
    assert "stderr:\nTraceback" in got["content"] and "KeyError: 'missing'" in got["content"]
    got = exec_tool(server, {"lang": "js", "code": "console.log(1)"})
    assert "lang 'js' is not supported: this sandbox runs Python only" in got["content"]
    got = exec_tool(server, {"lang": "py", "code": "print(1)"},
                    files=[{"id": "x" * 21, "resource_id": "u", "name": "gone.csv", "storage_session_id": "y" * 21,
                            "kind": "user"}])
    assert "'gone.csv'" in got["content"] and "upload it again" in got["content"]


def test_auth(server):
    got = exec_tool(server, {"lang": "py", "code": "print(1)"}, key="wrong-key-0123456789")
    assert "not authorized" in got["error"]
    with httpx.Client(base_url=f"{server.url}/librechat", timeout=60) as anon:
        assert anon.post("/upload", files={"file": ("a.txt", b"a")}).status_code == 401
        assert anon.get("/files/abc").status_code == 401
    with httpx.Client(base_url=f"{server.url}/librechat", timeout=120) as c:  # a bearer header works too
        r = c.post("/exec", json={"lang": "py", "code": "print(2)"}, headers={"Authorization": f"Bearer {KEY}"})
        assert r.json()["stdout"] == "2\n"


@pytest.mark.parametrize("body, status", [
    ({"files": {"file": ("", b"x")}}, 400),          # no usable file name
    ({"data": {"note": "no file"}}, 400),            # no file part
])
def test_bad_uploads_are_clear_errors(server, body, status):
    with http(server) as c:
        r = c.post("/upload", **body)
    assert r.status_code == status and r.json()["error"]["message"]


@pytest.mark.parametrize("code, expected", [
    ("pd.read_csv('/mnt/data/sales.csv')", "pd.read_csv('sales.csv')"),
    ('plt.savefig("/mnt/data/out/chart.png")', 'plt.savefig("out/chart.png")'),
    ("os.listdir('/mnt/data')", "os.listdir('.')"),
    ("f'/mnt/data/{name}'", "f'{name}'"),
    ("x = '/mnt/database'\n# /mnt/data/in-a-comment", "x = '/mnt/database'\n# /mnt/data/in-a-comment"),
    ("print('unterminated", "print('unterminated"),
])
def test_mnt_data_in_string_literals_maps_to_the_working_directory(code, expected):
    from sandbox.compat.librechat import map_data_dir
    assert map_data_dir(code) == expected


def test_a_session_keeps_variables_for_the_same_user_and_entity(server):
    who = {"user_id": "user-7", "entity_id": "agent-state"}
    first = exec_tool(server, {"lang": "py", "code": "x = 41\nimport math"}, params=who)
    again = exec_tool(server, {"lang": "py", "code": "print(x + 1, math.pi > 3)"}, params=who)
    assert again["content"].rstrip() == "stdout:\n42 True", again
    assert again["artifact"]["session_id"] == first["artifact"]["session_id"]
    other = exec_tool(server, {"lang": "py", "code": "print(x)"}, params={**who, "user_id": "user-8"})
    assert "NameError" in other["content"] and other["artifact"]["session_id"] != first["artifact"]["session_id"]
    # The engine session behind it is one of this key's sessions, with the engine's ttl.
    sid = first["artifact"]["session_id"]
    space = next(sp for (o, kind, i), sp in server.app.state.peer_store._spaces.items() if i == sid)
    owned = next(o for o, mine in server.app.state.peer_store._owned.items() if any(k[2] == sid for k in mine))
    assert space.session in {s.id for s in server.app.state.sessions.owned_by(owned)}


def test_outputs_are_stored_under_the_requests_session_with_its_inputs(server):
    with http(server) as c:
        up = c.post("/upload", files={"file": ("notes.txt", b"draft", "text/plain")}).json()
    sid, fid = up["session_id"], up["files"][0]["fileId"]
    files = [{"id": fid, "name": "notes.txt", "storage_session_id": sid, "resource_id": "u", "kind": "user"}]
    code = "open('/mnt/data/notes.txt', 'w').write('final')\nopen('/mnt/data/more.txt', 'w').write('new')"
    got = exec_tool(server, {"lang": "py", "code": code}, files=files, params={"session_id": sid})
    art = got["artifact"]
    assert art["session_id"] == sid
    changed = {f["name"]: f for f in art["files"]}
    assert set(changed) == {"notes.txt", "more.txt"}
    assert changed["notes.txt"]["modified_from"]["id"] == fid and "modified_from" not in changed["more.txt"]
    with http(server) as c:
        assert c.get(f"/download/{sid}/{changed['notes.txt']['id']}").content == b"final"
        full = c.get(f"/files/{sid}", params={"detail": "full"}).json()
    by_name = {e["metadata"]["original-filename"]: e for e in full}
    assert set(by_name) == {"notes.txt", "more.txt"}
    assert by_name["more.txt"]["size"] == 3 and by_name["more.txt"]["contentType"] == "text/plain"
    # A later exec that names only the session finds its files (inputs and outputs) in place.
    got = exec_tool(server, {"lang": "py", "code": "print(open('notes.txt').read(), open('more.txt').read())"},
                    params={"session_id": sid})
    assert got["content"].rstrip() == "stdout:\nfinal new", got


def test_a_long_exec_sends_keep_alive_spaces_before_its_json(server):
    with http(server) as c, c.stream("POST", "/exec", json={
            "lang": "py", "code": "import time\ntime.sleep(5)\nprint('done')"}) as r:
        body = b"".join(r.iter_raw())
    assert r.status_code == 200 and body.startswith(b" ")
    assert json.loads(body)["stdout"] == "done\n"
