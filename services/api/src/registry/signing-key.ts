/**
 * The key that signs registry tokens: an ES256 (P-256) private key and a self-signed certificate
 * of its public key, in one PEM file made at set-up (infra/registry-token-key.sh). The registry
 * trusts the certificate (its `rootcertbundle`) and finds it by either of two header fields each
 * token carries:
 *
 * - `kid`, the libtrust key id that distribution 2.8 matches: SHA-256 of the DER
 *   SubjectPublicKeyInfo (the key, not the certificate), its first 240 bits in RFC 4648 base32
 *   without padding, in 12 groups of 4 joined by `:` (distribution docs/spec/auth/jwt.md@v2.8.2);
 * - `x5c`, the certificate itself (standard base64 DER), which 2.8 checks first and registry 3.x,
 *   which dropped libtrust, needs.
 */
import { createHash, createPrivateKey, createPublicKey, type KeyObject, X509Certificate } from 'node:crypto';

export type SigningKey = {
  privateKey: KeyObject;
  /** The libtrust key id of the public key. */
  kid: string;
  /** The certificate, standard base64 of its DER: the one element of `x5c`. */
  certificate: string;
};

const PEM_BLOCK = /-----BEGIN ([A-Z ]+)-----[\s\S]+?-----END \1-----/g;

/**
 * Parses the PEM text of the key file: one EC P-256 private key and one certificate of the same
 * key. Throws an Error whose message says what is wrong (and never quotes the key).
 */
export function parseSigningKey(pem: string): SigningKey {
  let keyPem: string | undefined;
  let certPem: string | undefined;
  for (const m of pem.matchAll(PEM_BLOCK)) {
    const label = m[1] ?? '';
    if (label.endsWith('PRIVATE KEY')) keyPem ??= m[0];
    else if (label === 'CERTIFICATE') certPem ??= m[0];
  }
  if (!keyPem) throw new Error('holds no PEM private key');
  if (!certPem) throw new Error('holds no PEM certificate (the registry trusts the key by it)');
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(keyPem);
  } catch (err) {
    throw new Error(`the private key does not parse: ${(err as Error).message}`);
  }
  if (privateKey.asymmetricKeyType !== 'ec' || privateKey.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new Error(
      `the private key must be EC P-256 for ES256 (got ${privateKey.asymmetricKeyType} ${privateKey.asymmetricKeyDetails?.namedCurve ?? ''})`.trim(),
    );
  }
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (err) {
    throw new Error(`the certificate does not parse: ${(err as Error).message}`);
  }
  const spki = spkiDer(createPublicKey(privateKey));
  if (!spkiDer(cert.publicKey).equals(spki)) {
    throw new Error('the certificate is not of the private key beside it');
  }
  return { privateKey, kid: libtrustKeyId(spki), certificate: cert.raw.toString('base64') };
}

function spkiDer(key: KeyObject): Buffer {
  return key.export({ type: 'spki', format: 'der' });
}

/** The libtrust key id of a public key, from the DER of its SubjectPublicKeyInfo. */
export function libtrustKeyId(spki: Buffer | KeyObject): string {
  const der = Buffer.isBuffer(spki) ? spki : spkiDer(spki);
  const digest = createHash('sha256').update(der).digest().subarray(0, 30);
  const encoded = base32(digest);
  return encoded.match(/.{4}/g)?.join(':') ?? encoded;
}

const BASE32_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 base32, no padding (30 bytes → 48 characters, so none would be added anyway). */
export function base32(bytes: Uint8Array): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32_ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32_ALPHABET[(value << (5 - bits)) & 31];
  return out;
}
