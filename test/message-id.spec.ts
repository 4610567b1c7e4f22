import { newMessageId } from '../lib/delivery/message-id';

describe('newMessageId', () => {
  it('makes RFC 4122 version 4 UUIDs, as crypto.randomUUID does', () => {
    for (let i = 0; i < 1000; i++) {
      expect(newMessageId()).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    }
  });

  it('never repeats across many refills of its entropy', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 20_000; i++) seen.add(newMessageId());
    expect(seen.size).toBe(20_000);
  });

  it('uses every hex digit in every random position (no stuck nibble)', () => {
    const digitsAt: Set<string>[] = Array.from({ length: 36 }, () => new Set<string>());
    for (let i = 0; i < 2000; i++) [...newMessageId()].forEach((char, at) => digitsAt[at].add(char));
    const fixed = new Set([8, 13, 14, 18, 19, 23]); // dashes, the version digit and the variant digit
    digitsAt.forEach((digits, at) => {
      if (!fixed.has(at)) expect(digits.size).toBe(16);
    });
    expect([...digitsAt[19]].sort()).toEqual(['8', '9', 'a', 'b']);
  });
});
