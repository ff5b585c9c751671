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


# ---- resolve(): which credentials a command uses (one rule for relay-check, check, creds, audit, peer)

import dataclasses  # noqa: E402

from natkit.credentials import MAX_TTL, resolve  # noqa: E402
from natkit.errors import NotRunning  # noqa: E402


@dataclasses.dataclass
class Managed:
    name: str
    secret: str | None
    uris: tuple[str, ...]


A = Managed("a", "secret-a", ("turn:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=tcp"))
B = Managed("b", "secret-b", ("turn:127.0.0.2:3478",))
LT = Managed("lt", None, ("turn:127.0.0.3:3478",))


def servers(*s):
    return lambda: list(s)


def test_given_secret_is_rest_with_default_user_part():
    c = resolve(secret="s", uris=["turn:h"], servers=servers(A))
    assert (c.kind, c.secret, c.user, c.uris, c.server) == ("rest", "s", "natkit", ("turn:h",), None)
    assert c.pair()[0].endswith(":natkit")


def test_empty_user_part_means_a_bare_expiry_everywhere():
    c = resolve(secret="s", user="", uris=["turn:h"])
    assert c.user == "" and c.pair()[0].isdigit()


def test_long_term_pair_is_used_as_given():
    c = resolve(user="alice", password="pw", uris=["turn:h"], servers=servers(A))
    assert (c.kind, c.pair()) == ("long-term", ("alice", "pw"))


@pytest.mark.parametrize("kw, message", [
    ({"secret": ""}, "--secret is empty"),
    ({"secret": "s", "user": "u", "password": "p"}, "not both"),
    ({"password": "p"}, "--password needs --user"),
    ({"user": "u", "password": ""}, "--password is empty"),
    ({"secret": "s", "user": "a:b"}, "must not contain ':'"),
])
def test_contradictions_are_usage_errors(kw, message):
    with pytest.raises(UsageError, match=message):
        resolve(uris=["turn:h"], servers=servers(A), **kw)


def test_managed_secret_only_for_its_own_uris():
    # the managed server's own URIs (any spelling that parses the same) get its secret ...
    c = resolve(uris=["turn:127.0.0.1:3478?transport=tcp", "TURN:127.0.0.1"], servers=servers(A, B))
    assert (c.kind, c.secret, c.server) == ("rest", "secret-a", A)
    # ... another server never does, even when only one managed server exists
    with pytest.raises(UsageError, match="needs --secret or --user/--password"):
        resolve(uris=["turn:turn.example.org"], servers=servers(A))
    # URIs of two different managed servers: no single owner
    with pytest.raises(UsageError, match="needs --secret"):
        resolve(uris=["turn:127.0.0.1:3478", "turn:127.0.0.2:3478"], servers=servers(A, B))


def test_naming_a_server_is_consent_for_any_uri():
    c = resolve(uris=["turns:turn.example.org"], name="b", servers=servers(A, B))
    assert (c.secret, c.uris, c.server) == ("secret-b", ("turns:turn.example.org",), B)
    with pytest.raises(NotRunning, match="no natkit-managed coturn called 'c'"):
        resolve(name="c", servers=servers(A, B))


def test_no_uri_means_the_only_managed_server_and_its_uris():
    c = resolve(servers=servers(A))
    assert (c.secret, c.uris) == ("secret-a", A.uris)
    with pytest.raises(UsageError, match="several"):
        resolve(servers=servers(A, B))
    with pytest.raises(NotRunning):
        resolve(servers=servers())


def test_long_term_managed_server_has_no_secret_to_lend():
    with pytest.raises(UsageError, match="long-term users"):
        resolve(name="lt", servers=servers(LT))


def test_not_required_gives_none_instead_of_an_error():
    c = resolve(uris=["turn:turn.example.org"], required=False, servers=servers(A))
    assert (c.kind, c.secret, c.username) == ("none", None, None)
    assert resolve(uris=A.uris, required=False, servers=servers(A)).secret == "secret-a"


def test_use_managed_false_never_looks():
    def boom():
        raise AssertionError("must not list managed servers")

    with pytest.raises(UsageError, match="credentials needed"):
        resolve(uris=["turn:h"], use_managed=False, servers=boom)


def test_secret_repr_never_shows_secrets():
    c = resolve(secret="topsecret", uris=["turn:h"])
    assert "topsecret" not in repr(c)
    assert "pw-x" not in repr(resolve(user="u", password="pw-x", uris=["turn:h"]))


@pytest.mark.parametrize("ttl", [MAX_TTL + 1, -MAX_TTL - 1, 10**20])
def test_mint_rejects_absurd_ttl(ttl):
    with pytest.raises(UsageError, match="ten years"):
        mint("s", "u", ttl)
