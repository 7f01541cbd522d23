#!/usr/bin/env python3
"""Independent computation of the known-answer values in tests/kat.rs.

Uses only Python's hashlib and the `cryptography` package (X25519, Ed25519, RSA
PKCS#1 v1.5), not our code. Run from sshproto/: python3 tests/kat/gen_kat.py
"""
import hashlib
import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, x25519


def string(b):
    return struct.pack(">I", len(b)) + b


def mpint(b):
    b = b.lstrip(b"\x00")
    if b and b[0] & 0x80:
        b = b"\x00" + b
    return string(b)


def raw(pub):
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


a = bytes(range(1, 33))
b = bytes(range(33, 65))
ca = x25519.X25519PrivateKey.from_private_bytes(a)
sb = x25519.X25519PrivateKey.from_private_bytes(b)
q_c = raw(ca.public_key())
q_s = raw(sb.public_key())
k = ca.exchange(x25519.X25519PublicKey.from_public_bytes(q_s))
assert k == sb.exchange(x25519.X25519PublicKey.from_public_bytes(q_c))

host = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([7] * 32))
k_s = string(b"ssh-ed25519") + string(raw(host.public_key()))

v_c = b"SSH-2.0-VIC"
v_s = b"SSH-2.0-Go"
i_c = bytes([20]) + b"client-kexinit-fixture"
i_s = bytes([20]) + b"server-kexinit-fixture"
k_mp = mpint(k)
h = hashlib.sha256(
    string(v_c) + string(v_s) + string(i_c) + string(i_s) + string(k_s) + string(q_c) + string(q_s) + k_mp
).digest()
sid = h


def derive(letter, n):
    out = hashlib.sha256(k_mp + h + letter + sid).digest()
    while len(out) < n:
        out += hashlib.sha256(k_mp + h + out).digest()
    return out[:n]


print("q_c", q_c.hex())
print("q_s", q_s.hex())
print("k", k.hex())
print("h", h.hex())
for letter, n in [(b"A", 16), (b"B", 16), (b"C", 32), (b"D", 64), (b"E", 32), (b"F", 32)]:
    print("key", letter.decode(), n, derive(letter, n).hex())
print("ed25519_sig_over_h", host.sign(h).hex())

msg = b"sshproto known-answer message"
with open("tests/keys/rsa2048", "rb") as f:
    rsa2048 = serialization.load_ssh_private_key(f.read(), password=None)
with open("tests/keys/rsa512.pem", "rb") as f:
    rsa512 = serialization.load_pem_private_key(f.read(), password=None)
print("rsa2048_sha256", rsa2048.sign(msg, padding.PKCS1v15(), hashes.SHA256()).hex())
print("rsa2048_sha512", rsa2048.sign(msg, padding.PKCS1v15(), hashes.SHA512()).hex())
print("rsa512_sha1", rsa512.sign(msg, padding.PKCS1v15(), hashes.SHA1()).hex())
print("rsa512_sha256", rsa512.sign(msg, padding.PKCS1v15(), hashes.SHA256()).hex())
print("ed25519_file_sig", serialization.load_ssh_private_key(open("tests/keys/ed25519", "rb").read(), password=None).sign(msg).hex())
