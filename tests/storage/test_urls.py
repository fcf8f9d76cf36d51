"""No password anywhere: every credential form SQLAlchemy accepts is hidden (the real server's cases are in
tests/storage/test_storages.py)."""

from __future__ import annotations

import pytest

from hpo.storage import redact, scrub

# ---------------------------------------------------------------------------------------------------------
# No password anywhere (the forms SQLAlchemy accepts; the real server's cases are in tests/storage/test_storages.py)

URLS = [  # (url, secret, what must still be shown)
    ("postgresql://hpo:Secret-1@db.lab:5432/hpo", "Secret-1", "db.lab:5432/hpo"),
    ("postgresql://hpo@db.lab/hpo?password=Secret-2", "Secret-2", "db.lab/hpo?password=***"),
    ("postgresql+psycopg://hpo@db.lab/hpo?sslmode=require&password=Secret-3&application_name=w",
     "Secret-3", "sslmode=require"),
    ("postgresql://hpo:Se@cret-4@db.lab/hpo", "cret-4", "db.lab/hpo"),  # an "@" in the password, unencoded
    ("postgresql://hpo:Se%40cret-5@db.lab/hpo", "cret-5", "db.lab/hpo"),  # percent-encoded
    ("postgresql://hpo:pw/with?odd#chars-6@db.lab/hpo", "chars-6", "db.lab/hpo"),
    ("postgresql://hpo:Secret-7@db.lab:notaport/hpo", "Secret-7", "notaport"),  # make_url cannot parse this
    ("mysql+pymysql://hpo:Secret-8@db.lab/hpo?passwd=Secret-8b", "Secret-8", "db.lab/hpo"),
    ("postgresql://hpo@db.lab/hpo?sslpassword=Secret-9", "Secret-9", "sslpassword=***"),
    ("host=db.lab password='Se cret-10' user=hpo", "cret-10", "host=db.lab"),  # libpq keywords
]


@pytest.mark.parametrize("url,secret,shown", URLS, ids=[u[1] for u in URLS])
def test_redact_hides_every_credential_form(url, secret, shown):
    assert secret not in redact(url) and "Se@" not in redact(url)
    assert shown in redact(url)
    message = f"could not connect to {url} (as {url.split('//')[-1]}): rejected password={secret}"
    assert secret not in scrub(message, url)


def test_local_storages_are_shown_as_they_are():
    for url in ("sqlite:///studies/studies.db", "studies/bundled.journal", "/data/a@b:c.journal"):
        assert redact(url) == url  # a path is not a URL: nothing to hide, nothing hidden


