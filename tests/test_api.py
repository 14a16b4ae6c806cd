"""The robot's HTTP API as its users meet it: the authorization matrix over every endpoint, the OpenAPI spec fuzzed
in-process by schemathesis, a real server process stopped, killed (SIGKILL, also during a seed install) and started
again, two claims racing, the lock-out, and the companion page driven in headless Chromium by Playwright."""
import json, os, re, secrets, signal, subprocess, threading, time
from pathlib import Path

import pytest

from conftest import PY, run
from continuonbrain import store
from continuonbrain.store import free_port

API = [PY, "-m", "continuonbrain.api"]
LAN, FAR = ("192.168.1.20", 50000), ("8.8.4.4", 50000)
CLAIM = {"account_id": "acct-1", "account_type": "personal", "owner_id": "ana"}


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    "A briefly trained policy, deployed, a release key, its pinned key set and signed seed bundles v1 and v2 (in-process, ~15 s)."
    from continuonbrain.jax_models.data import tfrecord_converter as tfc
    from continuonbrain.jax_models.export.export_jax import ExportSettings, export_bundle
    from continuonbrain.jax_models.export.inference_router import deploy
    from continuonbrain.jax_models.policy_train import PolicySettings, train_from_folder
    from continuonbrain.ota.bundle import BundleSettings, build_bundle, generate_key, make_trust, read_public_key
    from continuonbrain.recording.arm_episode_recorder import record
    t = tmp_path_factory.mktemp("seed")
    record(t/"episodes", episodes=4, steps=40, backend="sim", progress=False)
    tfc.convert(t/"episodes", t/"tfrecord", compress=True, images=False, rlds=False, val_fraction=0.25, progress=False)
    train_from_folder(str(t/"tfrecord"), str(t/"run"), PolicySettings(preset="development", window=32, batch_size=8, num_steps=40,
                      learning_rate=3e-3, eval_every=40, checkpoint_every=40, log_every=40), plot=False)
    export_bundle(ExportSettings(checkpoint_path=str(t/"run"), output_path=str(t/"cpu")), log=lambda m: None)
    deploy(t/"cpu", None, t/"deployed", log=lambda m: None)
    key = generate_key(t/"keys", "release")
    store.write_json(t/"trusted_keys.json", make_trust([read_public_key(key["public_path"])]))
    for v in (1, 2):
        build_bundle(BundleSettings(model_dir=str(t/"deployed"), out=str(t/f"seed-v{v}"), key=key["private_path"], version=v), log=lambda m: None)
    return t


def new_robot(path, seed, version: int | None = None) -> Path:
    "A robot OTA folder pinned to the release key; with `version` installed and committed (registered and paid for it)."
    from continuonbrain.ota.apply import apply_bundle, init_device, set_subscription, start
    root = init_device(path, seed/"trusted_keys.json")
    if version:
        set_subscription(root, True, True, "acct-0"); apply_bundle(root, str(seed/f"seed-v{version}"), log=lambda m: None)
        start(root, log=lambda m: None); set_subscription(root, False, False, "")
    return root


def app_client(root, bundle="", client=LAN):
    from fastapi.testclient import TestClient
    from continuonbrain.api.server import ServerSettings, create_app, prepare
    from continuonbrain.api.state import ApiSettings
    s = ServerSettings(root=str(root), seed_bundle=str(bundle), allowed_hosts=("testserver",), api=ApiSettings(lan_networks=("192.168.1.0/24",)))
    boot = prepare(s, log=lambda m: None)
    return TestClient(create_app(s), client=client, raise_server_exceptions=False), boot["pairing_code"]


def service_token(root) -> str:
    "The account service's token, made as on the robot's console (the command as written)."
    r = run([*API, "service-token", "--root", str(root)])
    assert r.returncode == 0 and "it is not shown again" in r.stdout, r.stderr
    return r.stdout.split()[-1]


def snapshot(root) -> str:
    "Every piece of state an unauthorised request must leave alone: the API's tables and the OTA folder's records."
    import sqlite3
    db = sqlite3.connect(root/"api.sqlite3")
    tables = {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("device", "ownership", "tokens", "pairing", "installs", "audit")}
    db.close()
    return json.dumps([tables, store.read_json(root/"subscription.json"), store.read_json(root/"state.json")], sort_keys=True, default=str)


def _tokens(c, code) -> dict:
    "The matrix's columns: how a request authenticates (headers, query string)."
    from continuonbrain.api import state
    other = c.post("/api/claim", json={"pairing_code": code, "account_id": "acct-2", "account_type": "organization", "owner_id": "olga"}).json()
    assert c.post("/api/ownership/release", headers={"Authorization": f"Bearer {other['token']}"}).status_code == 200
    code = state.new_pairing_code(c.app.state.robot.db())
    owner = c.post("/api/claim", json={"pairing_code": code, **CLAIM}).json()["token"]
    member = c.post("/api/accounts/acct-1/members", headers={"Authorization": f"Bearer {owner}"}, json={"member_id": "bo"}).json()["token"]
    return {"none": ({}, ""), "wrong": ({"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}, ""),
            "other account": ({"Authorization": f"Bearer {other['token']}"}, ""),          # the previous owner's, of another account
            "elsewhere": ({"Cookie": f"token={owner}", "X-Api-Key": owner, "X-Auth-Token": owner}, f"?token={owner}&access_token={owner}"),
            "member": ({"Authorization": f"Bearer {member}"}, ""), "owner": ({"Authorization": f"Bearer {owner}"}, ""),
            "account service": ({"Authorization": f"Bearer {state.new_service_token(c.app.state.robot.db())}"}, "")}


def _row(ok: int, member: int | None = None, owner: int | None = None, anyone: int | None = None, service: int | None = None) -> dict:
    refused = {k: anyone or 401 for k in ("none", "wrong", "other account", "elsewhere")}
    return {**refused, "member": member or anyone or ok, "owner": owner or anyone or ok, "account service": service or anyone or 401}


MATRIX = [   # in order: each row's state is what the rows before it left
    ("GET", "/api/ping", None, _row(200, anyone=200)),
    ("GET", "/api/ownership/status", None, _row(200, anyone=200)),
    ("POST", "/api/claim", "code", _row(409, anyone=409)),
    ("PUT", "/api/accounts/acct-2/subscription", {"registered": True, "paid": True}, _row(403, member=403, owner=403, service=403)),
    ("PUT", "/api/accounts/acct-1/subscription", {"registered": True, "paid": True}, _row(403, member=403, owner=403, service=200)),
    ("POST", "/api/accounts/acct-2/members", {"member_id": "cy"}, _row(403, member=403, owner=403)),
    ("POST", "/api/accounts/acct-1/members", {"member_id": "cy"}, _row(201, member=403)),
    ("POST", "/api/ota/install_seed", None, _row(202)),
    ("GET", "/api/ota/install", None, _row(200)),
    ("POST", "/api/ownership/release", None, _row(200, member=403)),
]


def test_the_authorization_matrix_every_endpoint_by_every_kind_of_token(seed, tmp_path):
    from continuonbrain.api import state
    root = new_robot(tmp_path/"robot", seed)
    c, code = app_client(root, tmp_path/"no-such-bundle")                 # an install starts, then fails its fetch
    tokens, seen = _tokens(c, code), []
    for method, path, body, expect in MATRIX:
        for who, (headers, query) in tokens.items():
            if body == "code": body = {"pairing_code": state.new_pairing_code(c.app.state.robot.db()), **CLAIM}
            before = snapshot(root)
            r = c.request(method, path + query, headers=headers, json=body)
            seen.append((method, path, who, r.status_code))
            assert r.status_code == expect[who], (method, path, who, r.status_code, r.text)
            assert "Traceback" not in r.text and (r.status_code < 400) == ("error" not in r.json()), r.text
            if r.status_code >= 400 or method == "GET": assert snapshot(root) == before, (method, path, who)
            while r.status_code == 202 and state.last_install(c.app.state.robot.db())["status"] == "running": time.sleep(0.05)
    assert len(seen) == len(MATRIX) * 7
    assert c.get("/api/ota/install", headers=tokens["owner"][0]).status_code == 401     # released: every token of the account is void


def test_the_openapi_spec_fuzzed_in_process_no_500s_and_every_answer_as_documented(seed, tmp_path):
    "schemathesis generates requests from the spec, valid and not, for every operation, anonymous and with the owner's token, from the robot's network."
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.config import SchemathesisConfig
    from schemathesis.generation import GenerationMode
    root = new_robot(tmp_path/"robot", seed)
    c, code = app_client(root, tmp_path/"no-such-bundle")
    owner = c.post("/api/claim", json={"pairing_code": code, **CLAIM}).json()["token"]
    service = service_token(root)

    async def from_the_lan(scope, receive, send):               # the requests come from the robot's network
        await c.app({**scope, "client": LAN} if scope["type"] == "http" else scope, receive, send)
    accepted = ["2xx", "401", "402", "403", "404", "409", "429"]   # a valid request refused for the robot's state (402: not paid) is fine
    config = SchemathesisConfig.from_dict({"checks": {"positive_data_acceptance": {"expected-statuses": accepted}}})
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", from_the_lan, config=config)
    ops, seen = [r.ok() for r in schema.get_all_operations()], set()
    assert [op.label for op in ops][-1] == "POST /api/ownership/release" and len(ops) == 8     # release last: the token works until then
    for op in ops:
        c.put("/api/accounts/acct-1/subscription", headers={"Authorization": f"Bearer {service}"}, json={"registered": True, "paid": True})
        for mode in GenerationMode:
            for headers in ({}, {"Authorization": f"Bearer {owner}"}):
                mine = {"path_parameters": {"account_id": "acct-1"}} if headers and "{account_id}" in op.path else {}   # the owner's own account
                @given(case=op.as_strategy(mode, **mine))
                @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
                def check(case):
                    seen.add((op.label, case.call_and_validate(headers={**headers, "Host": "testserver"}).status_code))
                try: check()
                except Unsatisfiable:                           # nothing to make invalid (no parameters, no body)
                    assert mode == GenerationMode.NEGATIVE, op.label
    codes = {code for _, code in seen}
    assert {200, 201, 202, 400, 401, 409, 422} <= codes and 500 not in codes, sorted(seen)   # valid and invalid requests both reached the API


class Server:
    "A real `python -m continuonbrain.api` process on a free port of 127.0.0.1, its output collected."
    def __init__(self, root, bundle=""):
        self.root, self.bundle, self.port, self.lines, self.proc = Path(root), str(bundle), free_port(), [], None

    @property
    def url(self) -> str: return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120):
        import httpx
        self.proc = subprocess.Popen([*API, "--root", str(self.root), "--seed-bundle", self.bundle, "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, "".join(self.lines)
            try:
                if httpx.get(self.url + "/api/ping", timeout=2).status_code == 200: return self
            except httpx.HTTPError: time.sleep(0.1)
        raise AssertionError("the API did not answer: " + "".join(self.lines))

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig); self.proc.wait(30)
        return self.proc.returncode

    def code(self) -> str:
        "The last pairing code the robot printed."
        return re.findall(r"pairing code:? ([A-Z2-9]{4}-[A-Z2-9]{4})", "".join(self.lines))[-1]

    def call(self, method, path, token=None, **kw):
        import httpx
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)


@pytest.fixture
def server(tmp_path):
    made = []
    def make(root, bundle=""):
        made.append(Server(root, bundle)); return made[-1]
    yield make
    for s in made:
        if s.proc and s.proc.poll() is None: s.stop(signal.SIGKILL)


def test_state_survives_a_restart_and_a_sigkill_and_the_console_pairing_code(seed, tmp_path, server):
    root = new_robot(tmp_path/"robot", seed)
    s = server(root).start()
    assert f"serving the robot's API and page on http://127.0.0.1:{s.port}/" in "".join(s.lines)
    owner = s.call("POST", "/api/claim", json={"pairing_code": s.code(), **CLAIM}).json()["token"]
    assert s.call("PUT", "/api/accounts/acct-1/subscription", service_token(root), json={"registered": True, "paid": True}).status_code == 200
    before = s.call("GET", "/api/ownership/status", owner).json()
    assert s.stop() in (0, -signal.SIGTERM)                                # SIGTERM: uvicorn stops cleanly, then re-raises it
    s.start()
    assert s.call("GET", "/api/ownership/status", owner).json() == before  # ownership, subscription, the token: all kept
    member = s.call("POST", "/api/accounts/acct-1/members", owner, json={"member_id": "bo"}).json()["token"]
    s.stop(signal.SIGKILL)                                                 # killed right after a committed change
    s.start()
    assert s.call("GET", "/api/ownership/status", member).json()["role"] == "member"
    assert s.call("POST", "/api/ownership/release", owner).json()["tokens_revoked"] == 2
    r = run([*API, "pairing-code", "--root", str(root)])                   # on the robot's console
    assert r.returncode == 0 and "valid 600 s" in r.stdout, r.stderr
    code = re.search(r"pairing code: (\S+)", r.stdout)[1]
    assert s.call("POST", "/api/claim", json={"pairing_code": s.code(), **CLAIM}).status_code == 401     # the older code is void
    assert s.call("POST", "/api/claim", json={"pairing_code": code, **CLAIM}).status_code == 201


def test_two_claims_racing_exactly_one_wins_then_the_lockout(seed, tmp_path, server):
    s = server(new_robot(tmp_path/"robot", seed)).start()
    for rnd in range(3):
        code, out = s.code(), []
        body = lambda i: {"pairing_code": code, "account_id": f"acct-{i}", "account_type": "personal", "owner_id": f"o-{i}"}
        ts = [threading.Thread(target=lambda i=i: out.append(s.call("POST", "/api/claim", json=body(i)))) for i in range(2)]
        for t in ts: t.start()
        for t in ts: t.join()
        assert sorted(r.status_code for r in out) == [201, 409], [r.text for r in out]
        winner = next(r.json() for r in out if r.status_code == 201)
        assert s.call("GET", "/api/ownership/status", winner["token"]).json()["account_id"] == winner["account_id"]
        assert s.call("POST", "/api/ownership/release", winner["token"]).status_code == 200   # prints a new code
    code = s.code()
    answers = [s.call("POST", "/api/claim", json={"pairing_code": "AAAA-AAAA", **CLAIM}) for _ in range(5)]
    assert [r.status_code for r in answers] == [401, 401, 401, 401, 429] and answers[-1].headers["retry-after"] == "300"
    s.stop(); s.start()                                                     # the lock-out survives a restart
    r = s.call("POST", "/api/claim", json={"pairing_code": code, **CLAIM})
    assert r.status_code == 429 and "claiming is locked for" in r.json()["error"], r.text


def test_sigkill_during_a_seed_install_leaves_the_last_known_good_model_and_a_consistent_state(seed, tmp_path, server):
    from continuonbrain.ota.apply import read_state
    root = new_robot(tmp_path/"robot", seed, version=1)                     # version 1 installed and committed
    s = server(root, seed/"seed-v2").start()
    owner = s.call("POST", "/api/claim", json={"pairing_code": s.code(), **CLAIM}).json()["token"]
    assert s.call("PUT", "/api/accounts/acct-1/subscription", service_token(root), json={"registered": True, "paid": True}).status_code == 200
    assert s.call("POST", "/api/ota/install_seed", owner).status_code == 202
    phases, end = [], time.monotonic() + 120
    while (not phases or phases[-1] != "installed") and time.monotonic() < end:   # version 2 in the inactive slot, its health check running
        phases.append(s.call("GET", "/api/ota/install", owner).json()["phase"]); time.sleep(0.01)
    assert phases[-1] == "installed", phases
    s.stop(signal.SIGKILL)
    st = read_state(root)
    assert (st["active"], st["version"], st["status"]) == ("a", 1, "good")  # the pointer never left version 1
    s.start()
    assert "cut off by a stop of the robot" in "".join(s.lines)
    job = s.call("GET", "/api/ota/install", owner).json()
    assert job["status"] == "interrupted" and "version 1 is active (good)" in job["message"], job
    status = s.call("GET", "/api/ownership/status", owner).json()
    assert (status["state"], status["seed_version"]) == ("ready", 1) and s.call("GET", "/api/ping").json()["model_version"] == 1
    assert not (root/"journal.json").exists() and not (root/"staging").exists() and not (root/"slots"/"b").exists()
    r = run([PY, "-m", "continuonbrain.ota.apply", "status", "--root", str(root)])
    assert "active: slot a, version 1 (good)" in r.stdout, r.stdout + r.stderr
    assert s.call("POST", "/api/ota/install_seed", owner).status_code == 202   # the retry installs version 2
    while (job := s.call("GET", "/api/ota/install", owner).json())["status"] == "running": time.sleep(0.2)
    assert (job["status"], job["version"], job["phase"]) == ("done", 2, "committed"), job
    assert read_state(root)["last_known_good"] == {"slot": "a", "version": 1}


def test_the_companion_page_in_headless_chromium_claim_install_ready_clear_token(seed, tmp_path, server):
    "Playwright drives Debian's chromium: a wrong then the right pairing code, an install refused then retried, Ready, the token cleared."
    from playwright.sync_api import expect, sync_playwright
    s = server(new_robot(tmp_path/"robot", seed), seed/"seed-v1").start()
    shots = Path(os.environ.get("CONTINUON_SCREENSHOTS") or tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 900, "height": 640})
        errors = []; page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(s.url + "/")
        expect(page.locator("#badge")).to_have_text("Unclaimed")
        expect(page.locator("#lan")).to_have_text("On the robot's network")
        page.click("#claim"); page.fill("#code", "WXYZ-2345"); page.fill("#account", "acct-1"); page.fill("#owner-id", "ana")
        page.click("#claim-submit")
        expect(page.locator("#error-text")).to_have_text("wrong pairing code (4 tries left before claiming is locked)")
        page.screenshot(path=str(shots/"1-wrong-code.png"), full_page=True)
        page.fill("#code", s.code().lower()); page.click("#claim-submit")
        expect(page.locator("#badge")).to_have_text("Seed pending")
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator("#claim-form")).to_be_hidden()
        page.click("#install")                                              # not paid yet: the robot's message, with Retry
        expect(page.locator("#error-text")).to_contain_text("subscription is not active for account acct-1")
        page.screenshot(path=str(shots/"2-not-subscribed.png"), full_page=True)
        assert s.call("PUT", "/api/accounts/acct-1/subscription", service_token(s.root), json={"registered": True, "paid": True}).status_code == 200
        page.click("#retry")
        expect(page.locator("#install")).to_have_attribute("aria-busy", "true")
        expect(page.locator("#install")).to_have_text("Installing\u2026")
        expect(page.locator("#badge")).to_have_text("Ready", timeout=120_000)
        expect(page.locator("#model")).to_have_text("seed version 1 (good)")
        expect(page.locator("#owner")).to_have_text("ana (acct-1, personal; you: owner)")
        page.screenshot(path=str(shots/"3-ready.png"), full_page=True)
        page.click("#clear-token")
        expect(page.locator("#clear-token")).to_be_disabled()
        expect(page.locator("#install")).to_be_disabled()
        assert page.evaluate("Object.keys(localStorage).length") == 0
        page.screenshot(path=str(shots/"4-token-cleared.png"), full_page=True)
        browser.close()
    assert errors == []


def test_an_install_whose_bundle_fails_verification_is_refused_clearly_and_changes_nothing(seed, tmp_path):
    import shutil
    root = new_robot(tmp_path/"robot", seed, version=1)
    bad = tmp_path/"seed-v2-altered"; shutil.copytree(seed/"seed-v2", bad)
    (bad/"model"/"config.json").write_text((bad/"model"/"config.json").read_text() + " ")   # one byte more than signed
    c, code = app_client(root, bad)
    owner = {"Authorization": f"Bearer {c.post('/api/claim', json={'pairing_code': code, **CLAIM}).json()['token']}"}
    c.put("/api/accounts/acct-1/subscription", headers={"Authorization": f"Bearer {service_token(root)}"}, json={"registered": True, "paid": True})
    slots = {p.name: store.file_manifest(p) for p in (root/"slots").iterdir()}
    assert c.post("/api/ota/install_seed", headers=owner).status_code == 202
    while (job := c.get("/api/ota/install", headers=owner).json())["status"] == "running": time.sleep(0.05)
    assert job["status"] == "failed" and "model/config.json" in job["message"] and job["phase"] in ("fetching", "verified"), job
    assert {p.name: store.file_manifest(p) for p in (root/"slots").iterdir()} == slots
    s = c.get("/api/ownership/status", headers=owner).json()
    assert (s["state"], s["seed_version"], s["seed_status"]) == ("ready", 1, "good")
