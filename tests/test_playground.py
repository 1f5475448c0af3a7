"""The playground page at ``/``, in a real browser (Debian's chromium + chromium-driver through selenium)
against a real service, and its HTTP contract (CSP, static files, the switch) without one.

The browser test serves two CIFAR-10 models, picks one on the page, uploads sample images through the
page's file input, reads the predicted label from the page and compares it with what ``/predict`` answers;
a corrupt file must show the service's JSON error message; with an API key set the page asks for it.
Screenshots (desktop and phone width) are saved in the test's temporary folder. Without chromium,
chromedriver or selenium the browser tests skip and say why (``.ci/run`` installs them on Debian).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import shared_path
from server import RunningServer, link_repository, run_server

from service.doors.playground import CONTENT_SECURITY_POLICY

#: The models the page chooses between, and the one it picks.
MODELS = ("resnet20", "resnet32")
PICKED = "resnet32"
#: (name the page sees, image under ../shared/data): distinct names, so the page's file line says which.
IMAGES = [
    ("cat-0001.jpg", "cifar10-sample/cat/0001.jpg"),
    ("ship-0000.jpg", "cifar10-sample/ship/0000.jpg"),
    ("chelsea.png", "photos/chelsea.png"),
    ("horse-0003.jpg", "cifar10-sample/horse/0003.jpg"),
]
API_KEY = "playground-test-key"
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions", "--window-size=1280,1000")


@pytest.fixture(scope="module")
def two_models(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = link_repository(model_repo, tmp_path_factory.mktemp("playground-repo"), *MODELS)
    with run_server(repo) as server:
        yield server


# --- HTTP: what the service sends with the page ---------------------------------------------------------


@pytest.mark.parametrize(("path", "media_type"), [
    ("/", "text/html"), ("/playground/playground.js", "text/javascript"),
    ("/playground/playground.css", "text/css"), ("/playground/icon.svg", "image/svg+xml"),
])
def test_the_page_and_its_files_come_with_a_strict_policy(two_models: RunningServer, path: str, media_type: str) -> None:
    response = httpx.get(two_models.url(path), timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"


def test_nothing_inline_and_nothing_fetched_from_elsewhere(two_models: RunningServer) -> None:
    html = httpx.get(two_models.url("/"), timeout=10).text
    assert "<style" not in html and " style=" not in html and "<script>" not in html and " on" + "click=" not in html
    for path in ("/", "/playground/playground.js", "/playground/playground.css"):
        text = httpx.get(two_models.url(path), timeout=10).text
        assert "http://" not in text and "https://" not in text and "@import" not in text and "url(" not in text


@pytest.mark.parametrize("path", ["/playground/nope.js", "/playground/..%2Fplayground.py", "/playground/", "/index.html"])
def test_only_the_shipped_files_are_served(two_models: RunningServer, path: str) -> None:
    response = httpx.get(two_models.url(path), timeout=10)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_the_page_is_not_an_api_operation_and_can_be_switched_off(tmp_path: Path, two_models: RunningServer) -> None:
    paths = httpx.get(two_models.url("/openapi.json"), timeout=10).json()["paths"]
    assert "/" not in paths and not any(path.startswith("/playground") for path in paths)
    with run_server(tmp_path, "--no-playground", wait="live") as server:
        assert httpx.get(server.url("/"), timeout=10).status_code == 404
        assert httpx.get(server.url("/playground/playground.js"), timeout=10).status_code == 404


# --- the real browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Debian chromium driven by chromedriver, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra has it)")
    chromium = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Any, what: str, timeout: float = 30) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=f"waited for {what}")


def upload(driver: Any, path: Path) -> None:
    """Choose ``path`` in the page's file input, then wait until the page has the service's answer or error."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file").send_keys(str(path))
    wait_for(driver, lambda d: d.find_element(By.ID, "file-name").text.startswith(path.name), f"{path.name} chosen")
    wait_for(driver, lambda d: d.find_element(By.ID, "answer").get_attribute("data-model")
             or d.find_element(By.ID, "error").is_displayed(), f"the answer for {path.name}")


def page_problems(driver: Any) -> list[str]:
    """What the browser's console said at warning level or worse (a CSP violation, a failed script)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")
            and "/predict" not in entry["message"]]  # a 422 for the corrupt file is expected


def test_choose_a_model_upload_images_read_the_labels(
    browser: Any, two_models: RunningServer, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(two_models.url("/"))
    wait_for(browser, lambda d: not d.find_element(By.ID, "model").get_property("disabled"), "the model list")
    listed = [option.get_attribute("value") for option in Select(browser.find_element(By.ID, "model")).options]
    assert listed == list(MODELS)
    versions = [option.text for option in Select(browser.find_element(By.ID, "version")).options]
    assert versions[0] == "latest (v1)" and versions[1].startswith("v1")
    Select(browser.find_element(By.ID, "model")).select_by_value(PICKED)
    assert "resnet32 · 10 classes · 32×32 input · fp32" in browser.find_element(By.ID, "model-facts").text

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4)
    upload(browser, corrupt)
    expected = httpx.post(two_models.url(f"/predict?model={PICKED}"), files={"file": (corrupt.name, corrupt.read_bytes())},
                          timeout=30)
    assert expected.status_code in (415, 422), expected.text
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and expected.json()["error"]["message"] in error.text
    assert f"({expected.status_code} {expected.json()['error']['code']})" in error.text
    assert browser.find_elements(By.CSS_SELECTOR, "#predictions li") == []

    for name, image in IMAGES:
        path = tmp_path / name
        shutil.copy(shared_path("data", image), path)
        upload(browser, path)
        assert not browser.find_element(By.ID, "error").is_displayed()
        answer = browser.find_element(By.ID, "answer")
        assert (answer.get_attribute("data-model"), answer.get_attribute("data-version")) == (PICKED, "1")
        assert answer.text.startswith(f"{PICKED} v1 answered in ") and answer.text.endswith(" ms")
        bars = browser.find_elements(By.CSS_SELECTOR, "#predictions li")
        assert len(bars) == 5
        shown = bars[0].find_element(By.CLASS_NAME, "label").text
        served = httpx.post(two_models.url(f"/predict?model={PICKED}&top_k=1"),
                            files={"file": (name, path.read_bytes())}, timeout=30).json()["predictions"][0]
        assert shown == served["label"] == bars[0].get_attribute("data-label"), name
        assert float(bars[0].get_attribute("data-score")) == pytest.approx(served["score"], abs=1e-6)
        assert browser.find_element(By.ID, "preview").is_displayed()
    browser.save_screenshot(str(tmp_path / "playground.png"))
    browser.set_window_size(390, 900)  # a phone
    browser.execute_script("document.getElementById('image-title').scrollIntoView()")
    browser.save_screenshot(str(tmp_path / "playground-phone.png"))
    browser.set_window_size(1280, 1000)
    assert page_problems(browser) == []
    print(f"screenshots: {tmp_path / 'playground.png'}, {tmp_path / 'playground-phone.png'}")


def test_every_control_is_reached_by_keyboard(browser: Any, two_models: RunningServer) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.get(two_models.url("/"))
    wait_for(browser, lambda d: not d.find_element("id", "model").get_property("disabled"), "the model list")
    reached = []
    for _ in range(12):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        reached.append(browser.switch_to.active_element.get_attribute("id"))
    assert {"model", "version", "top-k", "drop", "file"} <= set(reached), reached
    assert reached.index("model") < reached.index("drop") < reached.index("file")


def test_the_page_asks_for_the_api_key_and_keeps_it_in_memory(
    browser: Any, model_repo: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    repo = link_repository(model_repo, tmp_path / "repo", "resnet20")
    with run_server(repo, "--api-key", API_KEY) as server:
        browser.get(server.url("/"))
        wait_for(browser, lambda d: d.find_element(By.ID, "key-form").is_displayed(), "the API key field")
        assert "API key" in browser.find_element(By.ID, "key-help").text
        key = browser.find_element(By.ID, "api-key")
        key.send_keys("wrong-key\n")
        wait_for(browser, lambda d: "unauthorized" in d.find_element(By.ID, "key-help").text, "the refusal")
        browser.find_element(By.ID, "api-key").send_keys(API_KEY + "\n")
        wait_for(browser, lambda d: not d.find_element(By.ID, "key-form").is_displayed(), "the models")
        assert browser.find_element(By.ID, "api-key").get_attribute("value") == ""
        assert browser.execute_script("return document.cookie + JSON.stringify(localStorage) + "
                                      "JSON.stringify(sessionStorage)") == "{}{}"
        path = tmp_path / "ship-0000.jpg"
        shutil.copy(shared_path("data", "cifar10-sample/ship/0000.jpg"), path)
        upload(browser, path)
        assert browser.find_element(By.CSS_SELECTOR, "#predictions li").get_attribute("data-label") == "ship"
