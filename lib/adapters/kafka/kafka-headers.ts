import type { IHeaders } from 'kafkajs';

/** When a delayed message or a retry is due (epoch ms): its consumer holds it until then. */
export const DUE_HEADER = 'x-ductape-due';
export const MESSAGE_ID_HEADER = 'message-id';
export const CORRELATION_ID_HEADER = 'correlation-id';

/** Kafka header values (Buffers, or arrays of them) as the strings the delivery layer carries. */
export function inboundHeaders(headers: IHeaders | undefined): Record<string, string> {
  const result: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers ?? {})) {
    if (value === undefined || name === DUE_HEADER) continue;
    const first = Array.isArray(value) ? value[0] : value;
    if (first !== undefined) result[name] = Buffer.isBuffer(first) ? first.toString('utf8') : String(first);
  }
  return result;
}

export function headerText(headers: IHeaders | undefined, name: string): string | undefined {
  const value = headers?.[name];
  const first = Array.isArray(value) ? value[0] : value;
  return first === undefined ? undefined : Buffer.isBuffer(first) ? first.toString('utf8') : String(first);
}
