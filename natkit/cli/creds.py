"""``natkit creds``: TURN REST API credentials."""

from __future__ import annotations

from typing import List, Optional

import typer

from . import output


def creds_cmd(
    secret: Optional[str] = typer.Option(None, "--secret", "-s", envvar="NATKIT_TURN_SECRET", help="shared secret (coturn static-auth-secret); default: the running natkit coturn's"),
    user: str = typer.Option("natkit", "--user", "-u", help="user part of the username"),
    ttl: int = typer.Option(86400, "--ttl", help="lifetime in seconds (negative: already expired, for tests)"),
    urls: Optional[List[str]] = typer.Option(None, "--url", help="TURN URI(s) for the ICE server entry (default: the running natkit coturn's)"),
    name: Optional[str] = typer.Option(None, "--name", help="which natkit coturn to take the secret and URIs from"),
    json_out: bool = typer.Option(False, "--json", help="print a WebRTC RTCIceServer entry as JSON"),
) -> None:
    """Mint a time-limited TURN credential: username "<expiry>:<user>", password base64(HMAC-SHA1(secret, username)).

    Exit codes: 0 minted, 2 bad input, 3 no secret given and no natkit coturn running.
    """

    def body() -> int:
        from ..credentials import mint

        the_secret, the_urls = secret, list(urls or [])
        if not the_secret or not the_urls:
            try:
                from ..coturn.server import get_server

                info = get_server(name)
                the_secret = the_secret or info.secret
                the_urls = the_urls or list(info.uris)
            except Exception:
                if not the_secret:
                    raise
        if not the_secret:
            from ..errors import UsageError

            raise UsageError("no secret: pass --secret", hint="or start a server with natkit turn up")
        cred = mint(the_secret, user, ttl)
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
