"""A throwaway certificate authority for homeservers that federate on loopback.

Federation between Synapses runs over TLS, and the product never turns certificate
verification off, so neither do the tests: each federating `DevServer` presents a
certificate issued here, and every one of them trusts this CA alone
(`federation_custom_ca_list`). A real chain with verification on means a test that federates
exercises the same TLS path a deployment does, instead of a switch that only tests have.

The certificates name IP 127.0.0.1 (and DNS ``localhost``) in their subjectAltName, because
the test servers are called ``127.0.0.1:<port>``: for an IP literal Synapse connects to that
address and checks the certificate's IP entry, with no DNS or ``.well-known`` lookup.

Keys are EC P-256 (quick to make, accepted by OpenSSL and Twisted alike) and lifetimes are a
few days: long enough for any test run, short enough that a leaked file is worth nothing.
Nothing here is meant for anything but tests and the demo.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca.key"
# Certificates are back-dated by this much, so that a clock a little behind still accepts them.
_BACKDATE = datetime.timedelta(hours=1)
# A CA found on disk is reused only if it stays valid at least this long.
_MIN_REMAINING = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner alone, replacing any old file whole."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    """Write a certificate whole (a new file renamed over the old), so no reader sees half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class TestCA:
    """A CA key and self-signed certificate in one directory; see the module docstring.

    Make one with `TestCA.create`; hand it to every `DevServer` that should federate, and
    each issues its own server certificate from it.
    """

    # Not a test class, whatever its name: keeps pytest from trying to collect it.
    __test__ = False

    def __init__(
        self, directory: Path, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate
    ) -> None:
        self.directory = directory
        self._key = key
        self._certificate = certificate

    @classmethod
    def create(cls, directory: Path, *, days: int = 7) -> TestCA:
        """The CA in `directory`: the one already there if it is still good, else a new one.

        Idempotent, so that servers restarted in the same directory keep trusting each other;
        a CA that has (nearly) expired or cannot be read is replaced rather than reused.
        """
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
        existing = cls._load(directory, cert_path, key_path)
        if existing is not None:
            return existing

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "liaison-bot tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, "liaison-bot test CA"),
            ]
        )
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        # The key first: a certificate on disk without its key would be loaded as unusable.
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
        return cls(directory, key, certificate)

    @classmethod
    def _load(cls, directory: Path, cert_path: Path, key_path: Path) -> TestCA | None:
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError):
            return None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            return None
        if certificate.not_valid_after_utc - _now() < _MIN_REMAINING:
            return None
        return cls(directory, key, certificate)

    @property
    def ca_path(self) -> Path:
        """The CA certificate (PEM), for `federation_custom_ca_list` and TLS clients."""
        return self.directory / CA_CERT_NAME

    def issue(self, name: str, directory: Path, *, days: int = 3) -> tuple[Path, Path]:
        """Issue a server certificate for loopback; returns (certificate path, key path).

        Written to ``<name>.pem`` and ``<name>.key`` in `directory`, replacing any earlier
        pair of that name: issuing is cheap, and a fresh pair always matches this CA. `name`
        becomes the subject's common name; verification looks only at the subjectAltName,
        which holds IP 127.0.0.1 and DNS ``localhost``.
        """
        if not name or os.sep in name or name in (".", ".."):
            raise ValueError(f"certificate name must be a plain file name, not {name!r}")
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        ca_files = {self.ca_path.resolve(), (self.directory / CA_KEY_NAME).resolve()}
        if cert_path.resolve() in ca_files or key_path.resolve() in ca_files:
            raise ValueError(f"certificate name {name!r} would overwrite the CA's own files")

        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        not_after = min(now + datetime.timedelta(days=days), self._certificate.not_valid_after_utc)
        ca_ski = self._certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                        x509.DNSName("localhost"),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path


__all__ = ["TestCA"]
