// A foreign publisher's view of the telco-fleet envelope, written from docs/wire-format.md only.
import { randomUUID } from 'node:crypto';
import { CompactEncrypt, base64url, compactDecrypt } from 'jose';

// Types whose protected header carries `entity_version`, copied from this payload field.
export const ENTITY_VERSION_FIELD = { 'crm.customer.upsert': 'entity_version' };

/** The 32-byte AES-256 key of a key-registry entry (`key` is base64url without padding). */
export function secretOf(entry) {
  const secret = base64url.decode(entry.key);
  if (secret.length !== 32) throw new Error('a fleet key is 32 bytes');
  return secret;
}

/** The protected header for one message; `overrides` may fix message_id, created_at, ... */
export function protectedHeader(entry, messageType, schemaVersion, payload, overrides = {}) {
  const header = {
    alg: 'dir',
    enc: 'A256GCM',
    kid: entry.kid,
    cty: 'application/json',
    message_id: randomUUID(),
    message_type: messageType,
    schema_version: schemaVersion,
    producer: entry.producer,
    created_at: new Date().toISOString(), // e.g. 2026-11-21T23:25:03.123Z
  };
  const field = ENTITY_VERSION_FIELD[messageType];
  if (field !== undefined) header.entity_version = payload[field];
  return { ...header, ...overrides };
}

/** The AMQP body: JWE compact serialization of the payload's UTF-8 JSON. */
export async function seal(entry, header, payload) {
  const plaintext = new TextEncoder().encode(JSON.stringify(payload));
  return new CompactEncrypt(plaintext).setProtectedHeader(header).encrypt(secretOf(entry));
}

/** Decrypt and authenticate a body; only dir + A256GCM are accepted. */
export async function open(entry, jwe) {
  const { plaintext, protectedHeader: header } = await compactDecrypt(jwe, secretOf(entry), {
    keyManagementAlgorithms: ['dir'],
    contentEncryptionAlgorithms: ['A256GCM'],
  });
  return { header, payload: JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(plaintext)) };
}

export async function readStdinJson() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf-8'));
}
