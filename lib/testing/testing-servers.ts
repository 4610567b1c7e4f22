import { MemoryBrokerServer } from '../adapters/memory';
import { adapterLogContext, createAdapterLogger } from '../adapters/adapter-logger';
import type { AdapterLogger } from '../adapters/broker-adapter';
import type { BrokerEnvConfig } from '../interfaces/broker-options.interface';

/** Names of the in-memory servers the testing helper made; every one starts with this. */
const PREFIX = 'ductape-testing';

/** How many module instances use each server: the last one to close deletes it (its delayed messages with it). */
const users = new Map<string, number>();

/** The name of the testing server behind `brokerTag`/`slug`, shared by every module instance of one `group`. */
export function serverNameFor(group: string, brokerTag: string, slug: string): string {
  return `${PREFIX}.${group}.${brokerTag}.${slug}`;
}

/** Creates (or joins) the named server, with a logger, before any adapter asks for it. */
export function acquireServer(name: string): void {
  users.set(name, (users.get(name) ?? 0) + 1);
  if (users.get(name) === 1) MemoryBrokerServer.shared(name, serverLogger(name));
}

/** One module instance closed: the server goes with the last one. */
export function releaseServer(name: string): void {
  const count = (users.get(name) ?? 1) - 1;
  if (count > 0) {
    users.set(name, count);
    return;
  }
  users.delete(name);
  MemoryBrokerServer.deleteShared(name);
}

/** The testing server an env entry names, if it is one. */
export function testingServerName(env: BrokerEnvConfig<string>): string | undefined {
  if (env.type !== 'memory') return undefined;
  const name = (env.config as { server?: unknown } | undefined)?.server;
  return typeof name === 'string' && name.startsWith(`${PREFIX}.`) ? name : undefined;
}

/** Under the memory adapters' context, prefixed with the server's `group.brokerTag.slug`. */
function serverLogger(name: string): AdapterLogger {
  return createAdapterLogger(adapterLogContext('memory'), `[${name.slice(PREFIX.length + 1)}]`);
}
