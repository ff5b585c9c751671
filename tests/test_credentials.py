import base64
import hashlib
import hmac

import pytest

from natkit.credentials import mint, new_secret, rest_password
from natkit.errors import UsageError


def test_rest_password_is_base64_hmac_sha1():
    # independent computation of coturn's use-auth-secret scheme
    expected = base64.b64encode(hmac.new(b"north", b"1700000000:alice", hashlib.sha1).digest()).decode()
    assert rest_password("north", "1700000000:alice") == expected


def test_mint_username_and_expiry():
    cred = mint("s", "alice", 3600, now=1_700_000_000)
    assert cred.username == "1700003600:alice"
    assert cred.expires_at == 1_700_003_600
    assert cred.password == rest_password("s", "1700003600:alice")
    entry = cred.ice_server(["turn:h:3478"])
    assert entry == {"urls": ["turn:h:3478"], "username": "1700003600:alice", "credential": cred.password, "ttl": 3600}


def test_negative_ttl_gives_expired_credential():
    cred = mint("s", "u", -60, now=1000)
    assert cred.expires_at == 940


@pytest.mark.parametrize("secret, user, ttl", [("", "u", 1), ("s", "a:b", 1), ("s", "u", 0)])
def test_mint_rejects_bad_input(secret, user, ttl):
    with pytest.raises(UsageError):
        mint(secret, user, ttl)


def test_new_secret_is_random_and_long():
    a, b = new_secret(), new_secret()
    assert a != b and len(a) >= 32
