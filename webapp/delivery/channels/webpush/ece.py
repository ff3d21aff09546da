"""aes128gcm payload encryption for Web Push (RFC 8291 over RFC 8188), one record.

Written on ``cryptography`` primitives: each HKDF here needs one 32-byte output block, so it is
two HMACs (``hmac.digest``), and a fresh ephemeral P-256 key per message is the only costly
step (the ECDH). Web Push has no multi-recipient send: one encryption per device.
"""

from __future__ import annotations

import hmac
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CURVE = ec.SECP256R1()
_ECDH = ec.ECDH()
_X962 = serialization.Encoding.X962
_UNCOMPRESSED = serialization.PublicFormat.UncompressedPoint
# RFC 8291 section 4: push services must accept a 4096-byte body; that is 86 bytes of header
# (salt, record size, 65-byte key id), the payload, a 1-byte delimiter and a 16-byte tag.
MAX_PAYLOAD_BYTES = 3993
RECORD_SIZE = 4096
# RFC 8291 section 3.4 and RFC 8188 section 2.2 (the HKDF "info" strings, with the 0x01 counter
# byte of HKDF-Expand's single output block already appended where the info is constant).
_KEY_INFO = b"WebPush: info\x00"
_CEK_INFO = b"Content-Encoding: aes128gcm\x00\x01"
_NONCE_INFO = b"Content-Encoding: nonce\x00\x01"
_RS_IDLEN = RECORD_SIZE.to_bytes(4, "big") + bytes([65])


def _hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def _encrypt_with(
    payload: bytes,
    receiver: ec.EllipticCurvePublicKey,
    receiver_point: bytes,
    auth_secret: bytes,
    ephemeral: ec.EllipticCurvePrivateKey,
    salt: bytes,
) -> bytes:
    sender_point = ephemeral.public_key().public_bytes(_X962, _UNCOMPRESSED)
    shared = ephemeral.exchange(_ECDH, receiver)
    # RFC 8291 section 3.4: IKM = HKDF(salt=auth_secret, ikm=ECDH secret, info=key_info, L=32).
    # Every HKDF here needs at most one 32-byte output block, so extract is HMAC(salt, ikm) and
    # expand is HMAC(prk, info || 0x01), truncated (RFC 5869).
    prk_key = _hmac_sha256(auth_secret, shared)
    ikm = _hmac_sha256(prk_key, _KEY_INFO + receiver_point + sender_point + b"\x01")
    # RFC 8188 section 2.2-2.3: content-encryption key and nonce from the salt.
    prk = _hmac_sha256(salt, ikm)
    cek = _hmac_sha256(prk, _CEK_INFO)[:16]
    nonce = _hmac_sha256(prk, _NONCE_INFO)[:12]
    # One record (the payload always fits): plaintext, the 0x02 last-record delimiter, no
    # padding; the record's sequence number is 0, so its IV is the nonce itself.
    ciphertext = AESGCM(cek).encrypt(nonce, payload + b"\x02", None)
    return salt + _RS_IDLEN + sender_point + ciphertext


def encrypt_aes128gcm(
    payload: bytes,
    receiver: ec.EllipticCurvePublicKey,
    receiver_point: bytes,
    auth_secret: bytes,
) -> bytes:
    """The Web Push message body for ``payload`` (RFC 8291, ``Content-Encoding: aes128gcm``).

    ``receiver`` is the subscription's P-256 key (``p256dh``), ``receiver_point`` the same key
    as its 65-byte uncompressed point, ``auth_secret`` the 16-byte ``auth``. Each call uses a
    fresh ephemeral key and salt. ``payload`` must be at most ``MAX_PAYLOAD_BYTES``.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload larger than {MAX_PAYLOAD_BYTES} bytes")
    return _encrypt_with(
        payload,
        receiver,
        receiver_point,
        auth_secret,
        ec.generate_private_key(CURVE),  # ephemeral: one per message
        os.urandom(16),
    )
