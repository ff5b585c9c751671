"""``natkit creds``: TURN REST API credentials."""

from __future__ import annotations

from typing import List, Optional

import typer

from ..credentials import MAX_TTL
from . import options, output


def creds_cmd(
    secret: Optional[str] = options.secret_option("-s", help="shared secret (coturn static-auth-secret; default: a natkit-managed coturn's)"),
    secret_file: Optional[str] = options.secret_file_option(),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="user part of the username (default natkit; '' for a bare expiry)"),
    ttl: int = options.integer(86400, "--ttl", help="lifetime in seconds (negative: already expired, for tests)", low=-MAX_TTL, high=MAX_TTL),
    urls: Optional[List[str]] = typer.Option(None, "--url", help="TURN/STUN URI(s) for the ICE server entry (default: the managed coturn's)"),
    name: Optional[str] = typer.Option(None, "--name", help="which natkit coturn to take the secret and URIs from"),
    json_out: bool = typer.Option(False, "--json", help="print a WebRTC RTCIceServer entry as JSON"),
) -> None:
    """Mint a time-limited TURN credential: username "<expiry>:<user>", password base64(HMAC-SHA1(secret, username)).

    Without --secret: the secret of the natkit-managed coturn named by --name, or of the one whose
    own URIs the --url values are, or of the only one running (a URI that is not a managed server's
    own never gets its secret). Exit codes: 0 minted, 2 bad input, 3 no secret given and no natkit
    coturn running.
    """

    def body() -> int:
        from ..credentials import mint, resolve
        from ..uri import parse_ice_url

        the_secret = options.turn_secret(secret, secret_file)
        the_urls = list(urls or [])
        for url in the_urls:
            parse_ice_url(url)
        creds = resolve(secret=the_secret, user=user, uris=the_urls, name=name)
        cred = mint(creds.secret or "", creds.user, ttl)
        the_urls = list(creds.uris)
        if json_out:
            output.emit_json(cred.ice_server(the_urls))
        else:
            print(f"username:   {cred.username}")
            print(f"credential: {cred.password}")
            print(f"expires:    {cred.expires_at} (in {cred.ttl} s)")
            if the_urls:
                print(f"urls:       {' '.join(the_urls)}")
        return 0

    output.run(json_out, body)
