"""TLS material for ``turns:``: self-signed certificates and certificate facts.

* :func:`self_signed` makes a certificate and key (ECDSA P-256, SHA-256) with
  the given DNS names and IP addresses as subjectAltName, for a server that
  has no certificate yet. Browsers do not trust it: a real deployment wants a
  certificate from a CA (for example ACME); callers print a warning.
* :func:`cert_info` describes a certificate (names, issuer, validity) as a
  :class:`CertInfo`, for ``natkit turn audit``'s TLS finding.

Uses ``cryptography`` (pyca); no I/O except :func:`write_pair`.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from pathlib import Path

from .errors import UsageError

SELF_SIGNED_WARNING = (
    "using a self-signed TLS certificate: WebRTC clients will refuse turns: with it; "
    "give --cert/--key from a CA (for example ACME/Let's Encrypt) for production"
)


@dataclasses.dataclass(frozen=True)
class CertInfo:
    """Facts about one X.509 certificate. Times are ISO 8601 UTC strings."""

    subject: str  # RFC 4514 string
    issuer: str
    dns_names: tuple[str, ...]  # subjectAltName dNSName
    ip_addresses: tuple[str, ...]  # subjectAltName iPAddress
    not_before: str
    not_after: str
    days_left: float  # until not_after (negative: expired)
    self_signed: bool  # issuer == subject and the signature verifies with its own key
    key: str  # e.g. "EC secp256r1", "RSA 2048"
    signature_hash: str | None  # e.g. "sha256"
    serial: str  # hex

    def matches(self, host: str) -> bool:
        """True when ``host`` (a DNS name or IP literal) is among the certificate's names (RFC 6125, one-label wildcard)."""
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            ip = None
        if ip is not None:
            return str(ip) in self.ip_addresses
        host = host.lower().rstrip(".")
        for name in self.dns_names:
            name = name.lower().rstrip(".")
            if name == host:
                return True
            if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
                return True
        return False


def self_signed(
    names: list[str] | tuple[str, ...] = ("localhost",),
    *,
    days: int = 365,
    common_name: str | None = None,
    now: datetime.datetime | None = None,
) -> tuple[bytes, bytes]:
    """Return ``(certificate PEM, PKCS#8 private key PEM)`` for ``names``.

    ``names`` are DNS names or IP literals (each becomes a subjectAltName
    entry); ``days`` the validity in days (from five minutes before ``now``).
    Raises :class:`UsageError` for no names or a non-positive validity.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not names:
        raise UsageError("a certificate needs at least one name")
    if days <= 0:
        raise UsageError(f"certificate validity must be positive, got {days} days")
    sans: list = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            if not n or any(c.isspace() for c in n):
                raise UsageError(f"not a DNS name or IP address: {n!r}") from None
            sans.append(x509.DNSName(n))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or str(names[0])),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "natkit self-signed")])
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, crl_sign=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def write_pair(directory: str | os.PathLike, cert_pem: bytes, key_pem: bytes, *, cert_name: str = "turn_server_cert.pem",
               key_name: str = "turn_server_pkey.pem") -> tuple[Path, Path]:
    """Write the pair into ``directory`` (key 0600); return their paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = d / cert_name, d / key_name
    cert_path.write_bytes(cert_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def cert_info(cert: bytes, *, now: datetime.datetime | None = None) -> CertInfo:
    """Describe a certificate given as DER or PEM bytes. Raises :class:`UsageError` when it does not parse."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        c = x509.load_pem_x509_certificate(cert) if cert.lstrip().startswith(b"-----") else x509.load_der_x509_certificate(cert)
    except ValueError as exc:
        raise UsageError(f"not an X.509 certificate: {exc}") from None
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(i) for i in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    pub = c.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        key = f"RSA {pub.key_size}"
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        key = f"EC {pub.curve.name}"
    else:
        key = pub.__class__.__name__.replace("PublicKey", "")
    self_signed_ = False
    if c.issuer == c.subject:
        try:
            c.verify_directly_issued_by(c)
            self_signed_ = True
        except Exception:  # signature does not verify with its own key, or unsupported
            self_signed_ = False
    now = now or datetime.datetime.now(datetime.timezone.utc)
    not_after = c.not_valid_after_utc
    return CertInfo(
        subject=c.subject.rfc4514_string(),
        issuer=c.issuer.rfc4514_string(),
        dns_names=dns,
        ip_addresses=ips,
        not_before=c.not_valid_before_utc.isoformat(),
        not_after=not_after.isoformat(),
        days_left=(not_after - now).total_seconds() / 86400.0,
        self_signed=self_signed_,
        key=key,
        signature_hash=c.signature_hash_algorithm.name if c.signature_hash_algorithm else None,
        serial=format(c.serial_number, "x"),
    )
