"""The test bed's PKI, made on the fly: one CA signs every serving and client certificate.

Kept under <state>/pki and reused while complete, so kubeconfigs written earlier stay valid across
down/up. ECDSA P-256 keys: generating them takes milliseconds, and every component accepts them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Bump when the set of files or their contents change, so an old PKI is replaced rather than half-reused.
LAYOUT = "1"
APISERVER_IPS = ("127.0.0.1", "10.88.0.1", "10.96.0.1")
APISERVER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
KUBELET_IPS = ("10.88.0.1", "127.0.0.1")


@dataclass(frozen=True)
class Pki:
    """Paths of everything the components need; `<name>.crt` / `<name>.key` pairs live in `dir`."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


@dataclass(frozen=True)
class _Leaf:
    name: str
    common_name: str
    organization: str | None = None
    server: bool = False
    ips: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


# name -> subject. Client certs map to RBAC users/groups: CN is the user, O the group.
LEAVES = (
    _Leaf("apiserver", "kube-apiserver", server=True, ips=APISERVER_IPS, dns=APISERVER_NAMES),
    _Leaf("admin", "admin", "system:masters"),
    _Leaf("controller-manager", "system:kube-controller-manager"),
    _Leaf("scheduler", "system:kube-scheduler"),
    # The apiserver presents this to the kubelet's logs endpoint; masters so `kubectl logs` proxying is never denied.
    _Leaf("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
    _Leaf("kubelet", "llmtrain-kubelet", server=True, ips=KUBELET_IPS, dns=("localhost",)),
)


def ensure(directory: Path) -> Pki:
    """Create the PKI in `directory` unless a complete one of the current layout is already there."""
    pki = Pki(directory)
    wanted = [pki.ca_crt, pki.key("ca"), pki.sa_key, pki.sa_pub]
    wanted += [p for leaf in LEAVES for p in (pki.crt(leaf.name), pki.key(leaf.name))]
    marker = directory / "layout"
    if marker.exists() and marker.read_text() == LAYOUT and all(p.exists() for p in wanted):
        return pki
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca_cert = _ca_certificate(ca_key)
    _write(pki.key("ca"), _key_pem(ca_key))
    _write(pki.ca_crt, ca_cert.public_bytes(serialization.Encoding.PEM))
    for leaf in LEAVES:
        key = _new_key()
        _write(pki.key(leaf.name), _key_pem(key))
        _write(
            pki.crt(leaf.name), _leaf_certificate(leaf, key, ca_key, ca_cert).public_bytes(serialization.Encoding.PEM)
        )
    sa_key = _new_key()
    _write(pki.sa_key, _key_pem(sa_key))
    pub = sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write(pki.sa_pub, pub)
    marker.write_text(LAYOUT)
    return pki


def ensure_server_cert(
    pki: Pki, name: str, ips: tuple[str, ...], dns: tuple[str, ...] = (), issuer: str = "ca"
) -> tuple[Path, Path]:
    """A serving certificate for an add-on (e.g. a webhook), made once and kept; signed by the test bed's CA, or by
    the sub-CA `issuer` (see ensure_sub_ca)."""
    return _ensure_leaf(pki, _Leaf(name, name, server=True, ips=ips, dns=dns), issuer)


def ensure_client_cert(pki: Pki, name: str, user: str, group: str | None = None) -> tuple[Path, Path]:
    """A client certificate for one more API user (CN `user`, O `group`), so the API server's audit log can tell
    that client's requests apart (benchmarks count an operator's writes by user)."""
    return _ensure_leaf(pki, _Leaf(name, user, group), "ca")


def ensure_sub_ca(pki: Pki, name: str, dns: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A CA signed by the test bed's CA, for an add-on that insists on holding its CA's key (a webhook certificate
    rotator checks CA and key in its Secret): the test bed's own CA key never leaves the state dir. `dns` become
    SANs of the CA certificate itself (the rotator verifies its CA against a fixed name). The key is RSA in PKCS#1
    PEM, the one form that rotator parses."""
    crt, key_path = pki.crt(name), pki.key(name)
    if crt.exists() and key_path.exists():
        return crt, key_path
    ca_key, ca_cert = _load_issuer(pki, "ca")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
    builder = _validity(builder.public_key(key.public_key()).serial_number(x509.random_serial_number()), days=825)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    builder = builder.add_extension(_key_usage(ca=True), critical=True)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    pkcs1 = serialization.PrivateFormat.TraditionalOpenSSL
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, pkcs1, serialization.NoEncryption()))
    _write(crt, builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return crt, key_path


def _load_issuer(pki: Pki, issuer: str) -> tuple[ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key(pki.key(issuer).read_bytes(), password=None)
    cert_path = pki.ca_crt if issuer == "ca" else pki.crt(issuer)
    return key, x509.load_pem_x509_certificate(cert_path.read_bytes())  # type: ignore[return-value]


def _ensure_leaf(pki: Pki, leaf: _Leaf, issuer: str) -> tuple[Path, Path]:
    crt, key_path = pki.crt(leaf.name), pki.key(leaf.name)
    if crt.exists() and key_path.exists():
        return crt, key_path
    ca_key, ca_cert = _load_issuer(pki, issuer)
    key = _new_key()
    _write(key_path, _key_pem(key))
    _write(crt, _leaf_certificate(leaf, key, ca_key, ca_cert).public_bytes(serialization.Encoding.PEM))
    return crt, key_path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    # Backdated an hour so a slightly skewed clock does not make a fresh certificate "not yet valid".
    return builder.not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=days))


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """ECDSA keys sign; only the CA signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmtrain-testbed-ca")])
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    builder = _validity(builder.serial_number(x509.random_serial_number()), days=3650)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    builder = builder.add_extension(_key_usage(ca=True), critical=True)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return builder.sign(key, hashes.SHA256())


def _leaf_certificate(
    leaf: _Leaf,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
) -> x509.Certificate:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, leaf.common_name)]
    if leaf.organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, leaf.organization))
    builder = x509.CertificateBuilder().subject_name(x509.Name(attributes)).issuer_name(ca_cert.subject)
    builder = _validity(builder.public_key(key.public_key()).serial_number(x509.random_serial_number()), days=825)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(_key_usage(ca=False), critical=True)
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if leaf.server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
    )
    if leaf.server:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in leaf.dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in leaf.ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())
