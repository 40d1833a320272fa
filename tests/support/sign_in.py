"""What the user's browser does at Microsoft during "Acceder con Outlook": open the authorization
URL (the emulator consents at once) and carry the answer to our callback. We ask for
``response_mode=form_post``, so the answer is a page whose form posts ``code`` and ``state``; a
redirect (the default query mode) is followed as a GET."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import requests


@dataclass(frozen=True)
class SignInAnswer:
    url: str  # where the browser goes next: our callback
    method: str  # "POST" (form_post) or "GET" (a redirect)
    fields: dict[str, str] = field(default_factory=dict)

    def deliver(self, **headers: str) -> requests.Response:
        """Hand the answer to our callback, as the browser would; may be called again (a replay)."""
        if self.method == "POST":
            return requests.post(
                self.url, data=self.fields, headers=headers, allow_redirects=False, timeout=60
            )
        return requests.get(self.url, headers=headers, allow_redirects=False, timeout=60)


def at_microsoft(authorization_url: str, ca_path: str) -> SignInAnswer:
    page = requests.get(authorization_url, verify=ca_path, allow_redirects=False, timeout=30)
    if page.status_code in (301, 302, 303):
        return SignInAnswer(page.headers["Location"], "GET")
    assert page.status_code == 200, page.text
    form = _AutoPostForm()
    form.feed(page.text)
    assert form.action, f"no form to post in Microsoft's answer: {page.text[:300]}"
    return SignInAnswer(form.action, form.method, form.fields)


def sign_in(authorization_url: str, ca_path: str) -> requests.Response:
    """Microsoft's page, then our callback's answer (a 302 back to the CRM, or a page)."""
    return at_microsoft(authorization_url, ca_path).deliver()


class _AutoPostForm(HTMLParser):
    """The first form of the page and its hidden fields (what its ``onload`` submits)."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.method = "GET"
        self.fields: dict[str, str] = {}
        self._inside = False

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
            form = _AutoPostForm()
            form.feed(page.text)
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
