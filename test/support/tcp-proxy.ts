import { connect, createServer, type AddressInfo, type Socket } from 'node:net';

/**
 * A TCP proxy in front of a real broker, to cut a client's link at a chosen moment: the one fault
 * a test cannot ask the server for. `dropOnClientMethod` cuts the link instead of forwarding the
 * first client frame of that AMQP method (class and method ids) on a non-zero channel, once armed.
 */
export interface TcpProxy {
  port: number;
  /** Cuts the link when the client next sends this method on a channel (e.g. Channel.Close = 20, 40). */
  dropOnClientMethod(classId: number, methodId: number): void;
  /** How many links were cut so far. */
  readonly drops: number;
  /**
   * Kafka protocol: forwards the client's next request of this API key (Produce = 0) to the broker,
   * then cuts that link instead of forwarding the broker's answer to it: the request was carried
   * out, and the client saw its link fail, as when a network drops after the broker wrote.
   */
  cutOnKafkaResponse(apiKey: number): void;
  /** Cuts every open link now. */
  cutAll(): void;
  /** While true, every new link is cut as soon as it opens: the server looks down. */
  refuse(refusing: boolean): void;
  /**
   * While true, nothing is forwarded either way, on open links and new ones, and nothing is cut:
   * a network that silently drops packets. What was dropped is gone; links stay open and silent.
   */
  blackhole(dropping: boolean): void;
  close(): void;
}

export function startTcpProxy(targetPort: number, targetHost = '127.0.0.1'): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let armed: { classId: number; methodId: number } | undefined;
  let kafkaArmed: number | undefined;
  let drops = 0;
  let refusing = false;
  let dropping = false;
  const server = createServer((client) => {
    if (refusing) {
      client.on('error', () => undefined);
      client.destroy();
      return;
    }
    const upstream = connect(targetPort, targetHost);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('error', () => undefined);
      socket.on('close', () => sockets.delete(socket));
    }
    // Kafka frames: a 4-byte size, then (requests) api key, api version, correlation id.
    const kafka = { fromClient: Buffer.alloc(0), fromServer: Buffer.alloc(0), cutOnCorrelation: undefined as number | undefined };
    client.on('data', (chunk: Buffer) => {
      if (kafkaArmed !== undefined) {
        kafka.fromClient = Buffer.concat([kafka.fromClient, chunk]);
        while (kafka.fromClient.length >= 12 && kafka.fromClient.length >= 4 + kafka.fromClient.readInt32BE(0)) {
          if (kafkaArmed !== undefined && kafka.fromClient.readInt16BE(4) === kafkaArmed) {
            kafka.cutOnCorrelation = kafka.fromClient.readInt32BE(8);
            kafkaArmed = undefined;
          }
          kafka.fromClient = kafka.fromClient.subarray(4 + kafka.fromClient.readInt32BE(0));
        }
      }
      if (armed && containsMethod(chunk, armed.classId, armed.methodId)) {
        armed = undefined;
        drops++;
        upstream.destroy();
        client.destroy();
        return;
      }
      if (!dropping) upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (kafka.cutOnCorrelation !== undefined) {
        // Responses: a 4-byte size, then the correlation id.
        kafka.fromServer = Buffer.concat([kafka.fromServer, chunk]);
        let offset = 0;
        while (kafka.fromServer.length - offset >= 8) {
          if (kafka.fromServer.readInt32BE(offset + 4) === kafka.cutOnCorrelation) {
            if (offset > 0 && !dropping) client.write(kafka.fromServer.subarray(0, offset));
            kafka.cutOnCorrelation = undefined;
            drops++;
            upstream.destroy();
            client.destroy();
            return;
          }
          const size = kafka.fromServer.readInt32BE(offset);
          if (kafka.fromServer.length - offset < 4 + size) break;
          offset += 4 + size;
        }
        if (offset > 0 && !dropping) client.write(kafka.fromServer.subarray(0, offset));
        kafka.fromServer = kafka.fromServer.subarray(offset);
        return;
      }
      if (!dropping) client.write(chunk);
    });
    upstream.on('end', () => client.end());
    client.on('end', () => upstream.end());
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () =>
      resolve({
        port: (server.address() as AddressInfo).port,
        dropOnClientMethod: (classId, methodId) => (armed = { classId, methodId }),
        cutOnKafkaResponse: (apiKey) => (kafkaArmed = apiKey),
        get drops() {
          return drops;
        },
        cutAll: () => {
          for (const socket of sockets) socket.destroy();
        },
        refuse: (value) => (refusing = value),
        blackhole: (value) => (dropping = value),
        close: () => {
          server.close();
          for (const socket of sockets) socket.destroy();
        },
      }),
    );
  });
}

/** Looks for a method frame (type 1) on a non-zero channel with these ids; good enough for small test traffic. */
function containsMethod(chunk: Buffer, classId: number, methodId: number): boolean {
  for (let i = 0; i + 11 <= chunk.length; i++) {
    if (chunk[i] === 1 && chunk.readUInt16BE(i + 1) !== 0 && chunk.readUInt16BE(i + 7) === classId && chunk.readUInt16BE(i + 9) === methodId) return true;
  }
  return false;
}
