import { randomFillSync } from 'node:crypto';

/**
 * A random (version 4) UUID, as `crypto.randomUUID()` makes, written as one flat string: Node's
 * randomUUID joins 20 pieces into a string tree of about 600 bytes, which every queued message
 * then keeps alive through young-generation collections (a tenth of the memory broker's garbage).
 */
const IDS_PER_FILL = 256;
const entropy = Buffer.allocUnsafe(16 * IDS_PER_FILL);
let nextId = IDS_PER_FILL;
const HEX_DIGITS = Buffer.from('0123456789abcdef', 'latin1');
const text = Buffer.allocUnsafe(36);

export function newMessageId(): string {
  if (nextId === IDS_PER_FILL) {
    randomFillSync(entropy);
    nextId = 0;
  }
  const offset = 16 * nextId++;
  entropy[offset + 6] = (entropy[offset + 6] & 0x0f) | 0x40; // version 4
  entropy[offset + 8] = (entropy[offset + 8] & 0x3f) | 0x80; // RFC 4122 variant
  let at = 0;
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) text[at++] = 0x2d; // '-'
    const byte = entropy[offset + i];
    text[at++] = HEX_DIGITS[byte >> 4];
    text[at++] = HEX_DIGITS[byte & 0x0f];
  }
  return text.toString('latin1', 0, 36);
}
