"""What the user's browser does during "Acceder con Outlook": open the service's start URL (it sets
the flow's cookie and redirects to Microsoft), Microsoft's authorize page (the emulator consents at
once), and carry the answer to our callback with the browser's cookies. We ask for
``response_mode=form_post``, so the answer is a page whose form posts ``code`` and ``state``; a
redirect (the default query mode) is followed as a GET.

A ``Browser`` keeps its own cookies, as a real one does: a sign-in finished in another
``Browser`` carries none of the first one's. Like Chromium and Firefox, it treats loopback
(``http://127.0.0.1``) as a secure origin, so the ``Secure`` cookie of the local dev host is
kept and sent over http there (``http.cookiejar`` alone sends ``Secure`` cookies over https only);
``SameSite`` is not modelled here: tests/e2e/test_console_browser.py shows it in Chromium."""

from __future__ import annotations

import http.cookiejar
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import requests

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


class _LoopbackIsSecure(http.cookiejar.DefaultCookiePolicy):
    def return_ok_secure(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        host = urlsplit(request.get_full_url()).hostname or ""  # type: ignore[attr-defined]
        return host in LOOPBACK or super().return_ok_secure(cookie, request)  # type: ignore[arg-type]


class Browser:
    """One browser profile: a cookie jar and the emulator's CA."""

    def __init__(self, ca_path: str | None = None) -> None:
        self.session = requests.Session()
        self.session.cookies.set_policy(_LoopbackIsSecure())
        self.ca_path = ca_path

    def get(self, url: str, **headers: str) -> requests.Response:
        verify = self.ca_path if url.startswith("https://") and self.ca_path else True
        headers = self._with_cookies("GET", url, headers)
        return self.session.get(url, headers=headers, allow_redirects=False, timeout=60, verify=verify)

    def post(self, url: str, fields: dict[str, str], **headers: str) -> requests.Response:
        verify = self.ca_path if url.startswith("https://") and self.ca_path else True
        headers = self._with_cookies("POST", url, headers)
        return self.session.post(
            url, data=fields, headers=headers, allow_redirects=False, timeout=60, verify=verify
        )

    def _with_cookies(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        """The Cookie header by this jar's policy (requests would merge into a jar of the default one)."""
        from requests.cookies import MockRequest

        probe = MockRequest(requests.Request(method, url).prepare())
        self.session.cookies.add_cookie_header(probe)
        cookie = probe.get_new_headers().get("Cookie")
        return {**headers, "Cookie": cookie} if cookie else headers

    def cookie_names(self) -> list[str]:
        return [c.name for c in self.session.cookies]


@dataclass
class SignInAnswer:
    url: str  # where the browser goes next: our callback
    method: str  # "POST" (form_post) or "GET" (a redirect)
    fields: dict[str, str] = field(default_factory=dict)
    browser: Browser = field(default_factory=Browser)

    def deliver(self, **headers: str) -> requests.Response:
        """Hand the answer to our callback, as the browser would; may be called again (a replay)."""
        return self.deliver_from(self.browser, **headers)

    def deliver_from(self, browser: Browser, **headers: str) -> requests.Response:
        """The same answer carried by another browser (one that did not start the sign-in)."""
        if self.method == "POST":
            return browser.post(self.url, self.fields, **headers)
        return browser.get(self.url, **headers)


def start(start_url: str, browser: Browser) -> str:
    """Open the service's start URL; returns where it sends the browser (Microsoft)."""
    opened = browser.get(start_url)
    assert opened.status_code == 302, f"the start URL answered {opened.status_code}: {opened.text[:300]}"
    return opened.headers["Location"]


def at_microsoft(url: str, ca_path: str, browser: Browser | None = None) -> SignInAnswer:
    """``url`` is the service's start URL (opened first) or Microsoft's authorize URL itself."""
    browser = browser or Browser(ca_path)
    browser.ca_path = browser.ca_path or ca_path
    if "/api/auth/start" in urlsplit(url).path:
        url = start(url, browser)
    page = browser.get(url)
    if page.status_code in (301, 302, 303):
        return SignInAnswer(page.headers["Location"], "GET", browser=browser)
    assert page.status_code == 200, page.text
    form = Form.first(page.text)
    assert form.action, f"no form to post in Microsoft's answer: {page.text[:300]}"
    return SignInAnswer(form.action, form.method, form.fields, browser)


def sign_in(start_url: str, ca_path: str, browser: Browser | None = None) -> requests.Response:
    """The start URL, Microsoft's page, then our callback's answer (a 302 back to the CRM, or a page)."""
    return at_microsoft(start_url, ca_path, browser).deliver()


def confirm_account(page: requests.Response, browser: Browser, decision: str = "connect") -> requests.Response:
    """On our "confirm the account" page, press the button for ``decision`` (connect or cancel)."""
    form = Form.first(page.text)
    assert form.action, f"no confirmation form on the page: {page.text[:300]}"
    return browser.post(urljoin(page.url, form.action), {**form.fields, "decision": decision})


class Form(HTMLParser):
    """The first form of a page and its hidden fields (what its ``onload`` submits)."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.method = "GET"
        self.fields: dict[str, str] = {}
        self.buttons: dict[str, str] = {}
        self._inside = False

    @classmethod
    def first(cls, text: str) -> Form:
        form = cls()
        form.feed(text)
        return form

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "form" and not self.action:
            self.action, self.method, self._inside = (
                found.get("action", ""),
                found.get("method", "GET").upper(),
                True,
            )
        elif tag == "input" and self._inside and found.get("name"):
            self.fields[found["name"]] = found.get("value", "")
        elif tag == "button" and self._inside and found.get("name"):
            self.buttons[found.get("value", "")] = found["name"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


def approve_device_code(
    verification_uri: str, user_code: str, login: str, ca_path: str, *, accept: bool = True
) -> requests.Response:
    """What a person does with a device-code prompt: open the page, type the code, say which account
    signs in and accept (or cancel). Over HTTP on the identity platform's own page, nothing else."""
    with requests.Session() as browser:
        browser.verify = ca_path
        page = browser.get(verification_uri, timeout=30)
        assert page.status_code == 200 and 'name="otc"' in page.text, page.text[:300]
        asked = browser.post(verification_uri, data={"otc": user_code}, timeout=30)
        if asked.status_code != 200:  # a wrong or expired code: the page says why
            return asked
        return browser.post(
            verification_uri,
            data={"otc": user_code, "login": login, "consent": "accept" if accept else "refuse"},
            timeout=30,
        )


def admin_consent(
    url: str, ca_path: str, upn: str, *, accept: bool | None = None
) -> requests.Response:
    """What a Microsoft 365 administrator's browser does with an admin-consent URL: open it, sign in as
    ``upn`` and press a button on the consent page (the emulator shows it in ``interactive`` consent mode;
    in ``auto`` mode the user's registered ``consent`` decides at once). ``accept=None`` presses the button
    the registered user would (``consent="accept"|"refuse"``). Returns the identity platform's final
    answer: the 302 back to ``redirect_uri`` (or an error page when there is no redirect)."""
    with requests.Session() as browser:
        browser.verify = ca_path
        page = browser.get(url, allow_redirects=False, timeout=30)
        for _ in range(3):
            if page.status_code != 200:
                return page
            form = Form.first(page.text)
            if not form.action:
                return page
            fields = dict(form.fields)
            if "login" in fields and 'name="consent"' not in page.text:  # the sign-in page
                fields["login"] = upn
            else:  # the consent page: Accept or Cancel
                registered = re.search(r'data-person-consent="([a-z]+)"', page.text)
                wants = accept if accept is not None else (registered is None or registered.group(1) != "refuse")
                fields["consent"] = "accept" if wants else "refuse"
            page = browser.request(form.method, form.action, data=fields, allow_redirects=False, timeout=30)
        return page
