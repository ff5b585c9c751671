"""From :class:`~natkit.doctor.facts.Facts` to checks and named causes (pure: no I/O).

:func:`diagnose` returns the step table (:class:`~natkit.doctor.report.Check`)
and the findings (:class:`~natkit.doctor.report.Finding`); the rules for each
cause are in the function named after its step. See ``docs/doctor.md``.
"""

from __future__ import annotations

import datetime
import ipaddress

from ..model import TransportAddress
from .facts import Alloc, Facts, Reach, TlsFacts
from .report import Check, Finding, finding

_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
EXPIRING_DAYS = 14
# OpenSSL X509_V_ERR_* codes (x509_vfy.h) the TLS check names
_X509_EXPIRED, _X509_NOT_YET_VALID = 10, 9
_X509_SELF_SIGNED, _X509_SELF_SIGNED_IN_CHAIN = 18, 19
_X509_NO_ISSUER, _X509_NO_ISSUER_LOCALLY, _X509_LEAF_UNVERIFIABLE = 2, 20, 21
_X509_HOSTNAME_MISMATCH, _X509_IP_MISMATCH = 62, 64


def address_kind(ip: str) -> str:
    """"private" (RFC 1918, ULA), "cgnat" (RFC 6598), "loopback", "link-local",
    "unspecified" or "public" (documentation ranges count as public: the lab's internet)."""
    a = ipaddress.ip_address(ip)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    if a.is_unspecified:
        return "unspecified"
    if a.is_loopback:
        return "loopback"
    if a.is_link_local:
        return "link-local"
    if a.version == 4 and a in _CGNAT:
        return "cgnat"
    if any(a.version == n.version and a in n for n in _RFC1918):
        return "private"
    return "public"


def diagnose(facts: Facts) -> tuple[list[Check], list[Finding]]:
    """The step table and the findings for ``facts``."""
    checks: list[Check] = []
    findings: list[Finding] = []
    for step in (_reachability, _tls, _authentication, _allocations, _relayed_address, _permissions, _data, _channel, _family):
        c, f = step(facts)
        checks += c
        findings += f
    return checks, findings


# ---------------------------------------------------------------- reachability

def _reachability(facts: Facts) -> tuple[list[Check], list[Finding]]:
    ms = facts.timings.get("reach")
    checks = [Check("reach", r.target.label, "pass" if r.ok else ("fail" if r.target.given else "warn"),
                    ("answered" if r.ok else {"timeout": "no answer", "refused": "connection refused", "icmp": "port unreachable",
                                              "unresolved": "does not resolve"}.get(r.error or "", r.error or "failed"))
                    + ("" if r.target.given else " (fallback)"), (r.detail,), ms) for r in facts.reach]
    by = {tr: [r for r in facts.reach if r.target.transport == tr] for tr in ("udp", "tcp", "tls")}
    ok = {tr: any(r.ok for r in rs) for tr, rs in by.items()}
    ev = [f"{r.target.label}: {r.detail}" for r in facts.reach]
    if not any(ok.values()):
        errors = {r.error for r in facts.reach}
        stream_refused = any(r.error == "refused" for r in by["tcp"] + by["tls"])
        if by["udp"] and all(r.error == "icmp" for r in by["udp"]) and (stream_refused or not (by["tcp"] + by["tls"])):
            return checks, [finding("server-not-listening", ev)]
        if by["udp"] and all(r.error == "timeout" for r in by["udp"]) and stream_refused:
            return checks, [finding("udp-blocked-no-fallback", ev + [
                ("UDP is dropped silently (no ICMP error) while TCP connections are refused: the host is up, a firewall drops UDP, "
                "and there is no TCP/TLS listener to fall back to")])]
        del errors
        return checks, [finding("server-unreachable", ev)]
    if by["udp"] and not ok["udp"]:
        fallback = [r.target.label for r in facts.reach if r.ok]
        if all(r.error == "icmp" for r in by["udp"]):
            return checks, [finding("udp-not-listening", ev)]
        return checks, [finding("udp-blocked", ev + [f"TURN over {', '.join(fallback)} answers: use it as the fallback"],
                                data={"fallback": fallback})]
    if ok["udp"] and not ok["tcp"] and not ok["tls"] and (by["tcp"] or by["tls"]):
        return checks, [finding("no-tcp-fallback", [f"{r.target.label}: {r.detail}" for r in by["tcp"] + by["tls"]])]
    return checks, []


# ---------------------------------------------------------------- TLS certificate

def _tls(facts: Facts) -> tuple[list[Check], list[Finding]]:
    checks: list[Check] = []
    findings: list[Finding] = []
    for t in facts.tls:
        if t.verified is None:
            continue
        cert = t.cert or {}
        ev = _cert_evidence(t)
        cause = _tls_cause(t)
        given = t.target.given
        if cause is None:
            days = cert.get("days_left")
            status = "pass"
            if days is not None and days < EXPIRING_DAYS:
                status = "warn"
                if given:
                    findings.append(finding("tls-cert-expiring", ev, data={"days_left": days}))
            checks.append(Check("tls", t.target.label, status, f"certificate verifies for {t.hostname}", tuple(ev)))
            continue
        checks.append(Check("tls", t.target.label, "fail" if given else "warn",
                            t.verify_message or t.handshake_error or cause, tuple(ev)))
        if given:
            findings.append(finding(cause, ev, data={"verify_code": t.verify_code, "cert": cert}))
    return checks, findings


def _tls_cause(t: TlsFacts) -> str | None:
    if t.verified:
        return None
    if t.handshake_error and t.verify_code is None:
        return "tls-handshake-failed"
    code = t.verify_code
    cert = t.cert or {}
    if code in (_X509_EXPIRED, _X509_NOT_YET_VALID) or (cert.get("days_left") is not None and cert["days_left"] < 0):
        return "tls-cert-expired"
    if code == _X509_SELF_SIGNED or (code in (_X509_NO_ISSUER_LOCALLY, _X509_LEAF_UNVERIFIABLE) and cert.get("self_signed")):
        return "tls-cert-self-signed"
    if code in (_X509_HOSTNAME_MISMATCH, _X509_IP_MISMATCH):
        return "tls-cert-wrong-name"
    return "tls-cert-untrusted"


def _cert_evidence(t: TlsFacts) -> list[str]:
    ev = []
    if t.verify_message:
        ev.append(f"TLS handshake with verification → certificate verify failed: {t.verify_message} (OpenSSL code {t.verify_code})")
    elif t.handshake_error:
        ev.append(t.handshake_error)
    cert = t.cert
    if cert:
        names = [*cert.get("dns_names", ()), *cert.get("ip_addresses", ())]
        ev.append(f"certificate: subject {cert['subject']}, issuer {cert['issuer']}, names {', '.join(names) or 'none'}, "
                  f"valid {cert['not_before'][:10]} → {cert['not_after'][:10]} ({cert['days_left']:.0f} days left)"
                  + (", self-signed" if cert.get("self_signed") else ""))
        ev.append(f"the client asked for {t.hostname}")
    if t.version:
        ev.append(f"protocol {t.version}")
    return ev


# ---------------------------------------------------------------- authentication

def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(seconds: float) -> str:
    s = abs(seconds)
    if s >= 86400:
        return f"{s / 86400:.1f} d"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


def _authentication(facts: Facts) -> tuple[list[Check], list[Finding]]:
    a = facts.auth
    if a is None:
        return [Check("auth", "", "skip", "not checked: no transport reached the server")], []
    target = a.target.label if a.target else ""
    ms = facts.timings.get("auth")
    ev = [f"Allocate on {target} → {a.response}"]
    if a.outcome == "ok" and a.code in (400, 420) and not a.challenged:
        ev = [*ev, "an unsigned Allocate refused as unknown, without a 401 challenge: the server does not speak TURN"]
        return [Check("auth", target, "fail", a.response, tuple(ev), ms)], [finding("not-a-turn-server", ev)]
    if a.outcome == "ok":
        note = "credential accepted" if a.mode != "none" else "no credentials given; the server asked for none"
        if a.code in (486, 508):
            note = f"credential accepted ({a.code} comes after authentication)"
        return [Check("auth", target, "pass", note, tuple(ev), ms)], []
    if a.outcome == "no-auth":
        return [Check("auth", target, "fail", "no credentials needed", tuple(ev), ms)], [finding("auth-not-required", ev)]
    if a.outcome == "not-reached":
        return [Check("auth", target, "skip", "not checked: the Allocate could not be sent", tuple(ev), ms)], []
    if a.outcome == "timeout" and not a.challenged:
        binding = next((r for r in facts.reach if r.ok and a.target is not None and r.target == a.target), None)
        if binding is not None:
            ev = [f"Binding on {target} → {binding.detail}", *ev]
            return [Check("auth", target, "fail", "Binding answered, Allocate not", tuple(ev), ms)], [finding("not-a-turn-server", ev)]
        return [Check("auth", target, "fail", "no answer to the Allocate", tuple(ev), ms)], [finding("server-unreachable", ev)]
    if a.outcome == "timeout":
        ev.append("the server challenged (401 with REALM and NONCE), then did not answer the signed request: servers that drop "
                  "requests whose MESSAGE-INTEGRITY does not verify behave so")
    f = _auth_cause(a, ev)
    return [Check("auth", target, "fail", f.title, f.evidence, ms)], [f]


def _auth_cause(a, ev: list[str]) -> Finding:
    if a.mode == "rest":
        far = next((p for p in a.probes if p.ttl >= 365 * 86400), None)
        if far is not None and far.accepted and a.server_ahead_s:
            lo, hi = a.server_ahead_s
            ev = ev + [f"the same secret with an expiry {_duration(far.ttl)} ahead → success: the signature verifies",
                       f"bisecting the expiry: refused at now + {_duration(lo)}, accepted at now + {_duration(hi)}",
                       f"the server's clock runs {_duration(lo)}–{_duration(hi)} ahead of this machine's ({_when(a.now)})"]
            return finding("auth-clock-skew", ev, data={"server_ahead_s": [lo, hi]})
        if far is not None and not far.accepted:
            ev = ev + [(f"a credential minted with the same secret and an expiry {_duration(far.ttl)} ahead → refused too: "
                       "not a clock problem, the secret differs")]
            return finding("auth-wrong-secret", ev)
        return finding("auth-refused", ev)
    if a.mode == "long-term" and a.expiry is not None:
        left = a.expiry - a.now
        if left < 0:
            ev = ev + [(f"the username's timestamp {a.expiry} is {_when(a.expiry)}: expired {_duration(left)} ago by this "
                       f"machine's clock ({_when(a.now)})")]
            return finding("auth-credential-expired", ev, data={"expiry": a.expiry, "expired_s": -left})
        ev = ev + [(f"the username's timestamp {a.expiry} ({_when(a.expiry)}) is {_duration(left)} ahead: not expired here, so "
                   f"a wrong password/secret, or a server clock more than {_duration(left)} ahead (give --secret to tell)")]
        return finding("auth-refused", ev, data={"expiry": a.expiry})
    if a.mode == "none":
        ev = ev + ["no credentials were given: pass --secret (REST) or --user/--password"]
    return finding("auth-refused", ev)


# ---------------------------------------------------------------- allocations

def _allocations(facts: Facts) -> tuple[list[Check], list[Finding]]:
    checks: list[Check] = []
    findings: list[Finding] = []
    auth_refused = facts.auth is not None and facts.auth.outcome not in ("ok", "no-auth")
    for a in facts.allocs:
        fam = "IPv6" if a.family == 2 else "IPv4"
        label = f"{a.target.label} {fam} [{a.role}]"
        if a.ok:
            checks.append(Check("allocate", label, "pass", f"relayed {a.relayed}", ((f"Allocate → {a.response}, XOR-RELAYED-ADDRESS "
                                f"{a.relayed}, XOR-MAPPED-ADDRESS {a.mapped}, LIFETIME {a.lifetime}"),), facts.timings.get("allocate")))
            if a.family == 2 and a.relayed is not None and a.relayed.family == 4:
                findings.append(finding("ipv6-relay-advertised-ipv4", [(f"Allocate REQUESTED-ADDRESS-FAMILY=IPv6 → success with "
                                                                       f"XOR-RELAYED-ADDRESS {a.relayed}")]))
            continue
        if (auth_refused or (facts.auth is not None and facts.auth.code in (400, 420) and not facts.auth.challenged)) and a.role == "A":
            checks.append(Check("allocate", label, "skip", "not allocated: authentication failed", (a.response,)))
            continue
        ev = [(f"Allocate REQUESTED-TRANSPORT=UDP{' REQUESTED-ADDRESS-FAMILY=IPv6' if a.family == 2 else ''} on {a.target.label} "
              f"→ {a.response}")]
        if a.family == 2 and a.code == 440:
            checks.append(Check("allocate", label, "warn" if facts.wanted_ipv6 else "skip",
                                "no IPv6 relay" + ("" if facts.wanted_ipv6 else " (no IPv6 peer or URI asked for one)"), tuple(ev)))
            continue
        checks.append(Check("allocate", label, "fail", a.response, tuple(ev)))
        if a.code == 486:
            findings.append(finding("quota-reached", ev))
        elif a.code == 508:
            findings.append(finding("capacity-exhausted", ev))
        elif a.code is not None and a.family == 1:
            findings.append(finding("allocation-refused", ev, data={"code": a.code}))
    return checks, findings


# ---------------------------------------------------------------- the relayed address

def _relayed_address(facts: Facts) -> tuple[list[Check], list[Finding]]:
    a = facts.alloc("A")
    if a is None or not a.ok or a.relayed is None:
        return [], []
    relayed = a.relayed
    reached = a.target.addr
    kind = address_kind(relayed.host)
    out = facts.delivery("relay→peer")
    seen = out.source if out is not None and out.delivered else None
    ev = [f"XOR-RELAYED-ADDRESS {relayed} ({kind}); the client reached the server at {reached}"]
    if seen is not None:
        ev.append(f"relay traffic toward this client arrived from {seen}")
    own = relayed.host in facts.server_ips
    if own or (reached is not None and address_kind(reached.host) != "public" and kind != "public"):
        note = "the server's own address" if own else "a private address, as the server's (a private deployment)"
        if seen is not None and seen.host != relayed.host:
            findings = [finding("external-ip-wrong", ev + [f"peers are told {relayed.host} but the relay sends from {seen.host}"],
                                fix=f"external-ip={seen.host}/{relayed.host}", data={"public": seen.host, "relayed": relayed.host})]
            return [Check("relayed-address", str(relayed), "fail", "relay traffic leaves from another address", tuple(ev))], findings
        return [Check("relayed-address", str(relayed), "pass", note, tuple(ev))], []
    public = seen.host if seen is not None else (reached.host if reached is not None else "PUBLIC")
    if kind != "public":
        fix = f"external-ip={public}/{relayed.host}"
        return ([Check("relayed-address", str(relayed), "fail", f"{kind} relayed address behind a NAT", tuple(ev))],
                [finding("external-ip-missing", ev, fix=fix, data={"public": public, "relayed": relayed.host})])
    # public, not the server's: a separate relay address, or a wrong external-ip
    ok_path = seen is not None and seen.host == relayed.host
    pair_ok = any(d.delivered for d in facts.data if d.leg in ("A→B", "B→A"))
    if ok_path or (out is None and pair_ok):
        return [Check("relayed-address", str(relayed), "pass", "a separate public relay address", tuple(ev))], []
    fix = f"external-ip={seen.host}" if seen is not None else "external-ip=PUBLIC/PRIVATE (the address relay traffic leaves from)"
    if seen is None:
        ev.append("nothing the relay sent toward this client arrived")
    return ([Check("relayed-address", str(relayed), "fail", "relayed address is not where relay traffic comes from", tuple(ev))],
            [finding("external-ip-wrong", ev, fix=fix, data={"relayed": relayed.host, "public": seen.host if seen else None})])


# ---------------------------------------------------------------- permissions

def _permissions(facts: Facts) -> tuple[list[Check], list[Finding]]:
    checks: list[Check] = []
    findings: list[Finding] = []
    a = facts.alloc("A")
    relayed_kind = address_kind(a.relayed.host) if a is not None and a.relayed is not None else None
    own_relays = {x.relayed.host for x in facts.allocs if x.ok and x.relayed is not None}
    for p in facts.perms:
        ev = [f"CreatePermission on [{p.alloc}] XOR-PEER-ADDRESS={p.peer.host} ({p.why}) → {p.response}"]
        checks.append(Check("permission", f"[{p.alloc}] → {p.peer.host} ({p.why})", "pass" if p.ok else "fail",
                            "granted" if p.ok else p.response, tuple(ev)))
        if p.ok:
            continue
        refused = p.code == 403 or (p.code is None and p.response.startswith("error without ERROR-CODE"))  # pion: no code
        if refused and p.peer.host in own_relays:
            if relayed_kind == "public":
                findings.append(finding("deny-list-own-relay", ev + [(f"{p.peer.host} is this server's own relayed address: two "
                                                                     "clients of this server cannot reach each other")]))
            continue  # a private relayed address: external-ip-missing says it
        if p.code == 443:
            findings.append(finding("family-mismatch", ev + _family_evidence(facts), data={"peer": p.peer.host}))
        elif p.code == 403:
            findings.append(finding("peer-denied", ev, fix=f"allowed-peer-ip={p.peer.host}", data={"peer": p.peer.host}))
    return checks, findings


def _family_evidence(facts: Facts) -> list[str]:
    v6 = facts.alloc("v6")
    if v6 is None:
        return []
    return [f"Allocate REQUESTED-ADDRESS-FAMILY=IPv6 → {v6.response}" + (f", XOR-RELAYED-ADDRESS {v6.relayed}" if v6.ok else "")]


# ---------------------------------------------------------------- data

def _data(facts: Facts) -> tuple[list[Check], list[Finding]]:
    checks = [Check("data" if d.leg not in ("peer→relay", "relay→peer") else "peer-path", d.leg, "pass" if d.delivered else "fail",
                    (f"arrived in {d.ms:.0f} ms" + (f" from {d.source}" if d.source else "")) if d.delivered and d.ms is not None
                    else ("arrived" if d.delivered else "did not arrive"), (f"{d.leg}: sent to {d.sent_to} → "
                    + (f"arrived from {d.source}" if d.delivered else "nothing arrived"),), facts.timings.get("paths")) for d in facts.data]
    a = facts.alloc("A")
    if a is None or not a.ok or a.relayed is None:
        return checks, []
    if address_kind(a.relayed.host) != "public" and a.relayed.host not in facts.server_ips:
        return checks, []  # external-ip-missing explains any failure
    if a.relayed.host not in facts.server_ips and address_kind(a.relayed.host) == "public":
        out = facts.delivery("relay→peer")
        if out is None or not out.delivered or (out.source and out.source.host != a.relayed.host):
            return checks, []  # external-ip-wrong explains it
    inbound, outbound = facts.delivery("peer→relay"), facts.delivery("relay→peer")
    pair = [d for d in facts.data if d.leg in ("A→B", "B→A")]
    ev = [f"{d.leg}: sent to {d.sent_to} → " + (f"arrived from {d.source}" if d.delivered else "nothing arrived")
          for d in facts.data]
    if inbound is not None and not inbound.delivered:
        note = (" while the relay's own traffic toward the client gets through: a stateful firewall lets replies in and drops "
                "new flows toward the relay ports") if outbound is not None and outbound.delivered else ""
        ev = [e for e in ev if e.startswith(("peer→relay", "relay→peer"))]
        if any(d.delivered for d in pair):
            ev.append("between two allocations of this server data flows: the server relays to its own addresses without "
                      "crossing the firewall in front of it")
        return checks, [finding("relay-ports-blocked", ev + [(f"nothing sent to the relayed port {inbound.sent_to} reached the "
                                                             f"allocation{note}")], data={"relayed": str(a.relayed)})]
    if pair and not any(d.delivered for d in pair):
        if inbound is not None and inbound.delivered:
            return checks, [finding("data-not-relayed", ev + [("this client reaches the relay from outside, but the server's two "
                                                              "allocations cannot reach each other: the server cannot reach its "
                                                              "own public address (a NAT without hairpinning)")])]
        return checks, [finding("relay-ports-blocked" if inbound is None else "data-not-relayed", ev)]
    return checks, []


# ---------------------------------------------------------------- channels (relay-check's post-mortem)

def _channel(facts: Facts) -> tuple[list[Check], list[Finding]]:
    ch = facts.channel
    if ch is None:
        return [], []
    ms = facts.timings.get("channel")
    answers = ", ".join(ch.channel_bind) or "none"
    if ch.permission is not True or not ch.send_relayed:
        return [Check("channel", "ChannelBind", "skip", "not checked: the post-mortem's own allocations did not relay",
                      ch.lines, ms)], []
    if ch.channel_confirmed and ch.channeldata_relayed:
        return [Check("channel", "ChannelBind", "pass", "ChannelBind confirmed (signed), ChannelData relayed", ch.lines, ms)], []
    summary = ("ChannelBind never confirmed: " + answers) if not ch.channel_confirmed else "ChannelData not relayed"
    return ([Check("channel", "ChannelBind", "fail", summary, ch.lines, ms)],
            [finding("channel-bind-broken", [*ch.lines, summary], fix=ch.hint or None,
                     data={"channel_bind": list(ch.channel_bind), "channeldata_relayed": ch.channeldata_relayed})])


# ---------------------------------------------------------------- address family

def _family(facts: Facts) -> tuple[list[Check], list[Finding]]:
    if not facts.wanted_ipv6:
        return [], []
    v6 = facts.alloc("v6")
    v6_peers = [p for p in facts.peers if p.family == 6]
    if v6 is None:
        return [], []
    if v6.ok and v6.relayed is not None and v6.relayed.family == 6:
        return [Check("family", "IPv6", "pass", f"IPv6 relay {v6.relayed}")], []
    if any(p.code == 443 for p in facts.perms):
        return [Check("family", "IPv6", "fail", "no IPv6 relay for IPv6 peers", tuple(_family_evidence(facts)))], []
    ev = _family_evidence(facts) + ([f"IPv6 peers: {', '.join(p.host for p in v6_peers)}"] if v6_peers else
                                    ["an IPv6 URI was given: IPv6 clients expect IPv6 relays for IPv6 peers"])
    return [Check("family", "IPv6", "fail", "no IPv6 relay", tuple(ev))], [finding("family-mismatch", ev)]


def reach_summary(reach: list[Reach]) -> dict:
    """Per transport: True (answered), False (tried, no answer) — for the report's facts."""
    out: dict[str, bool] = {}
    for r in reach:
        out[r.target.transport] = out.get(r.target.transport, False) or r.ok
    return out


def relayed_of(allocs: list[Alloc] | tuple[Alloc, ...]) -> dict[str, str]:
    return {a.role: str(a.relayed) for a in allocs if a.ok and a.relayed is not None}


__all__ = ["TransportAddress", "address_kind", "diagnose", "reach_summary", "relayed_of"]
