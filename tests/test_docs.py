"""The docs site in a real browser: headless Chromium renders every page, the navigation and the API docs."""
import functools, http.server, importlib, inspect, re, shutil, subprocess, threading
from pathlib import Path
from html.parser import HTMLParser

import pytest

from conftest import ROOT

DOCS = ROOT/"_docs"
MODULE_PAGES = {"config": "config.html", "store": "store.html", "hardware": "hardware.html",
                "pi5_hardware_validation": "pi5_hardware_validation.html", "system_health": "system_health.html",
                "tests.integration_test": "integration_test.html", "runbook": "runbook.html", "docsite": "docsite.html",
                "rlds.schema": "rlds_schema.html", "rlds.validators": "rlds_validators.html",
                "recording.arm_episode_recorder": "capture.html", "jax_models.data.tfrecord_converter": "tfrecord.html",
                "rlds.export_pipeline": "export_bundle.html", "jax_models.utils.upload_to_gcs": "upload.html",
                "wavecore.blocks": "wavecore_blocks.html", "wavecore.model": "wavecore_model.html",
                "wavecore.curriculum": "curriculum.html", "wavecore.train": "seed_train.html",
                "wavecore.eval": "wavecore_eval.html", "wavecore.export": "wavecore_export.html", "wavecore.distill": "distill.html",
                "wavecore.selfplay": "selfplay.html", "wavecore.scale": "scale.html", "wavecore.bench_tasks": "bench_tasks.html",
                "jax_models.core_model": "core_model.html", "jax_models.train.local_sanity_check": "sanity_train.html",
                "jax_models.train.cloud.tpu_train": "tpu_train.html",
                "jax_models.evaluate": "policy_eval.html",
                "trainer.local_lora_trainer": "lora_trainer.html", "training": "training.html",
                "jax_models.data.windows": "windows.html", "jax_models.policy_train": "policy_train.html",
                "jax_models.export.export_jax": "export_jax.html", "jax_models.export.export_hailo": "export_hailo.html",
                "jax_models.export.hailo_compile": "hailo_compile.html", "jax_models.export.inference_router": "inference_router.html",
                "reports": "reports.html", "tpu_plan": "tpu_plan.html"}
CHROME = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.ids, self.nav, self._in_nav, self.h1 = [], set(), [], False, []
        self._in_h1 = False
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a: self.ids.add(a["id"])
        if tag == "nav": self._in_nav = True
        if tag == "h1": self._in_h1 = True
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
            if self._in_nav: self.nav.append(a["href"])
    def handle_endtag(self, tag):
        if tag == "nav": self._in_nav = False
        if tag == "h1": self._in_h1 = False
    def handle_data(self, data):
        if self._in_h1: self.h1.append(data)


@pytest.fixture(scope="module")
def site():
    nbs = list((ROOT/"nbs").glob("*.ipynb"))
    if not (DOCS/"index.html").exists() or (DOCS/"index.html").stat().st_mtime < max(p.stat().st_mtime for p in nbs):
        pytest.fail("_docs/ is missing or older than the notebooks: run `make docs` (make test does)")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    handler = functools.partial(Quiet, directory=str(DOCS))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def chromium(*args, tmp) -> str:
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is not installed (make test installs it)"
    r = subprocess.run([exe, *CHROME, f"--user-data-dir={tmp}", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_every_page_renders_with_navigation(site, tmp_path):
    index = Links(); index.feed(chromium("--dump-dom", f"{site}/index.html", tmp=tmp_path/"p"))
    pages = [h for h in index.nav if h.endswith(".html")]
    assert set(MODULE_PAGES.values()) | {"index.html"} <= set(pages)
    assert "".join(index.h1).strip() == "continuonbrain"
    for page in pages:
        dom = chromium("--dump-dom", f"{site}/{page}", tmp=tmp_path/"p")
        p = Links(); p.feed(dom)
        assert p.nav == index.nav, page                     # the same sidebar on every page
        assert "".join(p.h1).strip(), f"{page} has no title"
        assert "</a>{target=" not in dom and "<p>:::" not in dom, f"{page} shows Quarto-only markup"
        for href in p.hrefs:                                # every internal link points at a page and an anchor that exist
            if href.startswith(("http:", "https:", "mailto:")): continue
            target, _, anchor = href.partition("#")
            target_file = DOCS/(target or page)
            assert target_file.exists(), f"{page}: broken link {href}"
            if anchor:
                t = Links(); t.feed(target_file.read_text())
                assert anchor in t.ids, f"{page}: link {href} has no anchor {anchor!r}"


def test_api_docs_cover_every_exported_symbol(site):
    for mod, page in MODULE_PAGES.items():
        p = Links(); p.feed((DOCS/page).read_text())
        m = importlib.import_module(f"continuonbrain.{mod}")
        documented = [n for n in m.__all__ if inspect.isfunction(getattr(m, n)) or inspect.isclass(getattr(m, n))]
        missing = [n for n in documented if n.lower() not in p.ids]
        assert missing == [], f"{page} lacks API docs for {missing}"


def test_executed_outputs_are_in_the_pages(site):
    hw = (DOCS/"hardware.html").read_text()
    assert "data:image/png;base64," in hw                              # the hardware plot, rendered at build time
    assert "Hardware check of" in hw                                   # printed report
    assert re.search(r'href="hardware.html#run_checks"', (DOCS/"runbook.html").read_text() + hw) or \
           'href="#run_checks"' in hw                                  # backticked names link to their docs


def test_screenshot(site, tmp_path):
    shot = tmp_path/"hardware.png"
    chromium("--window-size=1280,1600", f"--screenshot={shot}", f"{site}/hardware.html", tmp=tmp_path/"s")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000   # a page with content, not a blank canvas


def test_the_playbook_page_links_every_step_to_its_page_and_reference_report(site):
    "The site's playbook page, in Chromium: every step links to its notebook's page and to its report from the reference run, which opens with the step's result."
    from playwright.sync_api import sync_playwright
    from continuonbrain.docsite import REFERENCE_RUN, page_name
    from continuonbrain.runbook import STEPS
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(f"{site}/playbook.html")
        assert page.locator("nav.sidebar a.current").inner_text() == "The playbook, step by step"
        for s in STEPS:
            row = page.locator(f"tr#step-{s.name}")
            hrefs = row.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
            ref = f"{REFERENCE_RUN}/{s.name}/{Path(s.notebook).stem}.html"
            assert hrefs == [page_name(s.notebook), ref], (s.name, hrefs)
        for s in STEPS:
            page.goto(f"{site}/{REFERENCE_RUN}/{s.name}/{Path(s.notebook).stem}.html")
            assert f"Result: {s.name} ok in" in page.inner_text("body"), s.name
            assert page.evaluate("Array.from(document.styleSheets).some(x => x.href && x.href.endsWith('.css') && x.cssRules.length > 100)"), s.name  # its shared style sheet loaded
        page.goto(f"{site}/{REFERENCE_RUN}/overview.html")
        assert f"{len(STEPS)} of {len(STEPS)} step(s) ok" in page.inner_text("body")
        assert min(page.eval_on_selector_all("img", "is => is.map(i => i.naturalWidth)")) > 0
        browser.close()
