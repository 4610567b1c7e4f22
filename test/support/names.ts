import { randomUUID } from 'node:crypto';

/**
 * `base` with a short random suffix (`rmq-adapter-3f9c2a1b`): a product or prefix of this test
 * run's own, so whatever a suite declares on a shared broker is named apart from anything a user
 * (or another run) has there, and the suite deletes only what carries it.
 */
export function runUnique(base: string): string {
  return `${base}-${randomUUID().slice(0, 8)}`;
}
